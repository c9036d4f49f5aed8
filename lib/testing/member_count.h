// Test helper: how many members an aggregate has, at compile time. Tests use it to fail when a
// member is added to a struct whose members must each be listed somewhere (a comparison, a
// table of counters), until the new member is listed.
#ifndef IOPFD_LIB_TESTING_MEMBER_COUNT_H_
#define IOPFD_LIB_TESTING_MEMBER_COUNT_H_

#include <cstddef>

namespace iopfd_testing {

// Converts to any member type; declared only, never called (used in unevaluated contexts).
struct AnyValue {
  template <typename T>
  operator T() const;  // NOLINT(google-explicit-constructor)
};

// Returns the most initializers T{...} accepts, each an AnyValue: T's member count.
template <typename T, typename... Init>
constexpr size_t MemberCount() {
  if constexpr (requires { T{Init{}..., AnyValue{}}; }) {
    return MemberCount<T, Init..., AnyValue>();
  } else {
    return sizeof...(Init);
  }
}

}  // namespace iopfd_testing

#endif  // IOPFD_LIB_TESTING_MEMBER_COUNT_H_
