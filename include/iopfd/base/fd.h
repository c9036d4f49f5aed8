// A move-only owner of a file descriptor.
#ifndef IOPFD_BASE_FD_H_
#define IOPFD_BASE_FD_H_

#include <utility>

namespace iopfd {

class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of fd (which may be -1 for "none").
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) Reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  // Returns the descriptor, or -1 when empty.
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership and returns the descriptor.
  int Release() { return std::exchange(fd_, -1); }
  // Closes the current descriptor (errors from close are ignored: the fd is gone either way on
  // Linux) and takes fd.
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

}  // namespace iopfd

#endif  // IOPFD_BASE_FD_H_
