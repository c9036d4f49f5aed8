// The narrow syscall seam: every ioctl, open and memory mapping iopfd makes against the kernel
// goes through this interface, so device setup is testable without /dev/iommu.
#ifndef IOPFD_BASE_SYSCALLS_H_
#define IOPFD_BASE_SYSCALLS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "iopfd/switch_module.h"

namespace iopfd {

class Syscalls {
 public:
  virtual ~Syscalls() = default;
  // ioctl(2). Returns the (non-negative) result, or -errno.
  virtual int Ioctl(int fd, unsigned long request, void* arg) = 0;
  // open(2) with O_CLOEXEC added. Returns the fd, or -errno.
  virtual int Open(const char* path, int flags) = 0;
  // memfd_create(2) with MFD_CLOEXEC added, then ftruncate to size. Returns the fd, or -errno.
  virtual int MemfdCreate(const char* name, uint64_t size) = 0;
  // mmap(2) of a whole shared file range. Returns the address, or nullptr with errno set.
  virtual void* MapShared(int fd, uint64_t offset, uint64_t length, bool writable) = 0;
  virtual void Unmap(void* addr, uint64_t length) = 0;
  // read(2) and write(2), for the synchronous reads and writes of a fault fd (the loop's own
  // go through io_uring). Return the byte count, or -errno.
  virtual ssize_t Read(int fd, void* buf, size_t len) = 0;
  virtual ssize_t Write(int fd, const void* buf, size_t len) = 0;
  // pread(2) and pwrite(2), for a VFIO device's config region. Return the byte count, or
  // -errno.
  virtual ssize_t Pread(int fd, void* buf, size_t len, uint64_t offset) = 0;
  virtual ssize_t Pwrite(int fd, const void* buf, size_t len, uint64_t offset) = 0;
  // What a switch module exports (reset is optional: nullptr when absent).
  struct SwitchModule {
    iopfd_switch_attachment_fn attach = nullptr;
    iopfd_reset_function_fn reset = nullptr;
  };
  // Loads an attachment switch module (dlopen, kept loaded for the process's life) and returns
  // its entry points; attach is nullptr, with *error saying why (dlerror's text), on failure.
  virtual SwitchModule LoadSwitchModule(const std::string& path, std::string* error) = 0;
};

// Returns the process-wide implementation that calls the kernel.
Syscalls& RealSyscalls();

}  // namespace iopfd

#endif  // IOPFD_BASE_SYSCALLS_H_
