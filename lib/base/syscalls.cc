#include "iopfd/base/syscalls.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace iopfd {
namespace {

class Real final : public Syscalls {
 public:
  int Ioctl(int fd, unsigned long request, void* arg) override {
    int rc = ::ioctl(fd, request, arg);
    return rc < 0 ? -errno : rc;
  }
  int Open(const char* path, int flags) override {
    int fd = ::open(path, flags | O_CLOEXEC);  // NOLINT(cppcoreguidelines-pro-type-vararg)
    return fd < 0 ? -errno : fd;
  }
  int MemfdCreate(const char* name, uint64_t size) override {
    int fd = ::memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -errno;
    if (::ftruncate(fd, static_cast<off_t>(size)) < 0) {
      int err = errno;
      ::close(fd);
      return -err;
    }
    return fd;
  }
  void* MapShared(int fd, uint64_t offset, uint64_t length, bool writable) override {
    void* p = ::mmap(nullptr, length, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd,
                     static_cast<off_t>(offset));
    return p == MAP_FAILED ? nullptr : p;
  }
  void Unmap(void* addr, uint64_t length) override { ::munmap(addr, length); }
  ssize_t Read(int fd, void* buf, size_t len) override {
    ssize_t n = ::read(fd, buf, len);
    return n < 0 ? -errno : n;
  }
  ssize_t Write(int fd, const void* buf, size_t len) override {
    ssize_t n = ::write(fd, buf, len);
    return n < 0 ? -errno : n;
  }
  ssize_t Pread(int fd, void* buf, size_t len, uint64_t offset) override {
    ssize_t n = ::pread(fd, buf, len, static_cast<off_t>(offset));
    return n < 0 ? -errno : n;
  }
  ssize_t Pwrite(int fd, const void* buf, size_t len, uint64_t offset) override {
    ssize_t n = ::pwrite(fd, buf, len, static_cast<off_t>(offset));
    return n < 0 ? -errno : n;
  }
  SwitchModule LoadSwitchModule(const std::string& path, std::string* error) override {
    // RTLD_NOW: an unresolved symbol fails here, at attach, not in the middle of a drain.
    // Never dlclose'd: a module is small, and unloading code a later drain may call is worse.
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      *error = why != nullptr ? why : "dlopen failed";
      return {};
    }
    SwitchModule m;
    // dlsym's contract: the symbol's address, to be cast to the type the module declares.
    m.attach = reinterpret_cast<iopfd_switch_attachment_fn>(  // NOLINT
        ::dlsym(handle, IOPFD_SWITCH_SYMBOL));
    m.reset = reinterpret_cast<iopfd_reset_function_fn>(  // NOLINT
        ::dlsym(handle, IOPFD_RESET_SYMBOL));
    if (m.attach == nullptr) *error = path + ": does not export " IOPFD_SWITCH_SYMBOL;
    return m;
  }
};

}  // namespace

Syscalls& RealSyscalls() {
  static Real real;
  return real;
}

}  // namespace iopfd
