// Reading a fuzzer's bytes as structured input, and stopping loudly when an invariant breaks.
#ifndef IOPFD_TESTS_FUZZ_FUZZ_INPUT_H_
#define IOPFD_TESTS_FUZZ_FUZZ_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

namespace iopfd::fuzz {

// Takes values off the front of the input; past its end every value is zero and every string
// empty, so any input is a valid one.
class Input {
 public:
  Input(const uint8_t* data, size_t size)
      : data_(reinterpret_cast<const char*>(data)), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  size_t remaining() const { return size_ - pos_; }
  uint8_t Byte() { return empty() ? 0 : static_cast<uint8_t>(data_[pos_++]); }
  uint16_t U16() { return static_cast<uint16_t>(Byte() | (Byte() << 8)); }
  uint32_t U32() { return U16() | (static_cast<uint32_t>(U16()) << 16); }
  uint64_t U64() { return U32() | (static_cast<uint64_t>(U32()) << 32); }
  // The next n bytes (fewer at the end).
  std::string_view Take(size_t n) {
    n = n < remaining() ? n : remaining();
    std::string_view out(data_ + pos_, n);
    pos_ += n;
    return out;
  }
  // Bytes up to the next `sep` (consumed, not returned), or the rest.
  std::string_view Until(char sep) {
    std::string_view rest(data_ + pos_, remaining());
    size_t at = rest.find(sep);
    if (at == std::string_view::npos) {
      pos_ = size_;
      return rest;
    }
    pos_ += at + 1;
    return rest.substr(0, at);
  }
  std::string_view Rest() { return Take(remaining()); }

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

// An invariant failed: say which, then abort so that libFuzzer keeps the input (and the replay
// test fails naming it).
[[noreturn]] inline void Fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "fuzz invariant broken: %s%s%s\n", what, detail.empty() ? "" : ": ",
               detail.c_str());
  std::abort();
}
#define FUZZ_CHECK(cond, ...)                                           \
  do {                                                                  \
    if (!(cond)) ::iopfd::fuzz::Fail(#cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

}  // namespace iopfd::fuzz

#endif  // IOPFD_TESTS_FUZZ_FUZZ_INPUT_H_
