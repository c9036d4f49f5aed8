// Distinct types for iommufd object ids, so an IOAS id is never passed where a HWPT id belongs.
#ifndef IOPFD_BASE_IDS_H_
#define IOPFD_BASE_IDS_H_

#include <cstdint>
#include <functional>

namespace iopfd {

template <typename Tag>
class ObjectId {
 public:
  constexpr ObjectId() = default;
  constexpr explicit ObjectId(uint32_t value) : value_(value) {}
  // Returns the raw id the kernel uses.
  constexpr uint32_t value() const { return value_; }
  // iommufd never hands out id 0, so 0 means "none".
  constexpr bool valid() const { return value_ != 0; }
  friend constexpr bool operator==(ObjectId a, ObjectId b) = default;

 private:
  uint32_t value_ = 0;
};

using IoasId = ObjectId<struct IoasTag>;
using HwptId = ObjectId<struct HwptTag>;
using DeviceId = ObjectId<struct DeviceTag>;
using FaultId = ObjectId<struct FaultTag>;

}  // namespace iopfd

#endif  // IOPFD_BASE_IDS_H_
