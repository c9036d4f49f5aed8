#include "sim_kernel.h"

#include <endian.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace iopfd::sim {

SimKernel::SimKernel(PriDevice* device, PriPolicy policy) : device_(device), policy_(policy) {
  // Intel enables PRI when the device is probed (intel_iommu_probe_finalize) and leaves it on;
  // AMD enables it when an SVA-capable domain is attached to the RID.
  device_->SetEnabled(policy_ == PriPolicy::kIntel);
}

SimKernel::~SimKernel() {
  for (int fd : spare_) ::close(fd);
}

int SimKernel::NewFd() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return -errno;
  spare_.push_back(p[1]);
  fds_.insert(p[0]);
  return p[0];
}

int SimKernel::Open(const char* path, int /*flags*/) {
  std::string p(path);
  if (p == "/dev/iommu") {
    iommufd_ = NewFd();
    return iommufd_;
  }
  if (p == kCdev) {
    vfio_fd_ = NewFd();
    return vfio_fd_;
  }
  return -ENOENT;
}

int SimKernel::MemfdCreate(const char* /*name*/, uint64_t /*size*/) { return NewFd(); }

void* SimKernel::MapShared(int /*fd*/, uint64_t /*offset*/, uint64_t length, bool /*writable*/) {
  void* p = ::mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

void SimKernel::Unmap(void* addr, uint64_t length) { ::munmap(addr, length); }

SimKernel::FaultQueue* SimKernel::QueueByFd(int fd) {
  for (auto& [id, q] : faults_) {
    if (q.fd == fd) return &q;
  }
  return nullptr;
}

SimKernel::FaultQueue* SimKernel::QueueById(uint32_t id) {
  auto it = faults_.find(id);
  return it == faults_.end() ? nullptr : &it->second;
}

void SimKernel::Answer(const Group& g, ResponseCode code) {
  if (code == ResponseCode::kSuccess) {
    // Success tells the function to retry the translation: every page it asked for should now
    // be present in the IOAS of the attachment the group came from.
    auto h = hwpts_.find(g.hwpt);
    const uint32_t ioas = h == hwpts_.end() ? 0 : h->second.ioas;
    for (const PageRequest& r : g.requests) {
      bool mapped = false;
      for (const auto& [key, len] : mappings_) {
        mapped |= key.first == ioas && key.second <= r.addr && r.addr < key.second + len;
      }
      if (!mapped) {
        violations_.push_back(absl::StrCat("SUCCESS for PRG index ", r.prg_index, " at 0x",
                                           absl::Hex(r.addr), ", not mapped in IOAS ", ioas));
      }
    }
  }
  device_->Respond(g.requests.front().prg_index, g.requests.front().generation, code);
}

void SimKernel::UpdatePriEnable() {
  if (policy_ == PriPolicy::kIntel) return;  // on from probe to release
  auto rid = attached_.find(std::nullopt);
  bool iopf = false;
  if (rid != attached_.end()) {
    auto it = hwpts_.find(rid->second);
    iopf = it != hwpts_.end() && it->second.fault != 0;
  }
  device_->SetEnabled(iopf);
}

void SimKernel::Reattach(std::optional<uint32_t> pasid, uint32_t hwpt) {
  auto cur = attached_.find(pasid);
  if (cur != attached_.end()) {
    const Hwpt& old = hwpts_[cur->second];
    if (old.fault != 0) {
      // iommufd_auto_response_faults: every group of this attachment, queued or read, is
      // answered INVALID; the cookies user space holds for them become unknown. Partial groups
      // of the attachment are dropped (their requests were never a complete group).
      FaultQueue* q = QueueById(old.fault);
      if (q != nullptr) {
        for (auto it = q->queued.begin(); it != q->queued.end();) {
          if (it->pasid == pasid) {
            Answer(*it, ResponseCode::kInvalid);
            ++auto_responses_;
            it = q->queued.erase(it);
          } else {
            ++it;
          }
        }
        for (auto it = q->read.begin(); it != q->read.end();) {
          if (it->second.pasid == pasid) {
            Answer(it->second, ResponseCode::kInvalid);
            ++auto_responses_;
            it = q->read.erase(it);
          } else {
            ++it;
          }
        }
      }
      // Partial groups are left alone: io-pgfault keeps them per device, by PRG index.
    }
  }
  if (hwpt == 0) {
    attached_.erase(pasid);
  } else {
    attached_[pasid] = hwpt;
  }
  UpdatePriEnable();
}

int SimKernel::Ioctl(int fd, unsigned long request, void* arg) {
  if (before_ioctl) before_ioctl(request);
  if (fail_ioctl) {
    if (int err = fail_ioctl(request); err != 0) return -err;
  }
  const int rc = DoIoctl(fd, request, arg);
  if (after_ioctl) after_ioctl(request, rc);
  return rc;
}

void SimKernel::DeliverLate(const std::vector<PageRequest>& requests, uint32_t hwpt) {
  auto h = hwpts_.find(hwpt);
  FaultQueue* q = h != hwpts_.end() && h->second.fault != 0 ? QueueById(h->second.fault) : nullptr;
  if (q == nullptr || requests.empty()) {
    DeliverRequests(requests);
    return;
  }
  Group g;
  g.requests = requests;
  g.pasid = requests.front().pasid;
  g.hwpt = hwpt;
  q->queued.push_back(std::move(g));
}

int SimKernel::DoIoctl(int fd, unsigned long request, void* arg) {
  switch (request) {
    case uapi::kIommuIoasAlloc: {
      if (fd != iommufd_) return -ENOTTY;
      auto* c = static_cast<uapi::IommuIoasAlloc*>(arg);
      c->out_ioas_id = next_id_++;
      ioas_.insert(c->out_ioas_id);
      return 0;
    }
    case uapi::kIommuFaultQueueAlloc: {
      if (fd != iommufd_) return -ENOTTY;
      auto* c = static_cast<uapi::IommuFaultAlloc*>(arg);
      uint32_t id = next_id_++;
      int qfd = NewFd();
      if (qfd < 0) return qfd;
      faults_[id].fd = qfd;
      c->out_fault_id = id;
      c->out_fault_fd = static_cast<uint32_t>(qfd);
      return 0;
    }
    case uapi::kIommuHwptAlloc: {
      if (fd != iommufd_) return -ENOTTY;
      auto* c = static_cast<uapi::IommuHwptAlloc*>(arg);
      if (ioas_.count(c->pt_id) == 0 || c->dev_id != dev_id_ || !bound_) return -ENOENT;
      Hwpt h;
      h.ioas = c->pt_id;
      if ((c->flags & uapi::kHwptFaultIdValid) != 0) {
        if (QueueById(c->fault_id) == nullptr) return -ENOENT;
        h.fault = c->fault_id;
      }
      // hw_pagetable.c: dirty tracking only where the device's IOMMU is capable.
      if ((c->flags & uapi::kHwptAllocDirtyTracking) != 0) {
        if ((hw_capabilities & uapi::kHwCapDirtyTracking) == 0) return -EOPNOTSUPP;
        h.dirty_capable = true;
      }
      c->out_hwpt_id = next_id_++;
      hwpts_[c->out_hwpt_id] = h;
      return 0;
    }
    case uapi::kIommuDestroy: {
      auto* c = static_cast<uapi::IommuDestroy*>(arg);
      for (const auto& [pasid, hwpt] : attached_) {
        if (hwpt == c->id) return -EBUSY;
      }
      if (hwpts_.erase(c->id) != 0) return 0;
      if (ioas_.erase(c->id) != 0) {
        std::erase_if(mappings_, [&](const auto& m) { return m.first.first == c->id; });
        return 0;
      }
      return -ENOENT;
    }
    case uapi::kIommuIoasMap:
    case uapi::kIommuIoasMapFile: {
      uint32_t ioas;
      uint64_t iova, length;
      if (request == uapi::kIommuIoasMap) {
        auto* c = static_cast<uapi::IommuIoasMap*>(arg);
        ioas = c->ioas_id;
        iova = c->iova;
        length = c->length;
      } else {
        auto* c = static_cast<uapi::IommuIoasMapFile*>(arg);
        ioas = c->ioas_id;
        iova = c->iova;
        length = c->length;
      }
      if (ioas_.count(ioas) == 0) return -ENOENT;
      for (const auto& [key, len] : mappings_) {
        if (key.first == ioas && key.second < iova + length && iova < key.second + len) {
          return -EEXIST;
        }
      }
      mappings_[{ioas, iova}] = length;
      return 0;
    }
    case uapi::kIommuIoasCopy: {
      // ioas.c iommufd_ioas_copy / iopt_get_pages: the source range must be mapped without a
      // hole (ENOENT), the destination free (EEXIST); nothing is pinned.
      auto* c = static_cast<uapi::IommuIoasCopy*>(arg);
      if (fd != iommufd_) return -ENOTTY;
      if (ioas_.count(c->src_ioas_id) == 0 || ioas_.count(c->dst_ioas_id) == 0) return -ENOENT;
      uint64_t at = c->src_iova;
      const uint64_t end = c->src_iova + c->length;
      while (at < end) {
        bool found = false;
        for (const auto& [key, len] : mappings_) {
          if (key.first == c->src_ioas_id && key.second <= at && at < key.second + len) {
            at = key.second + len;
            found = true;
            break;
          }
        }
        if (!found) return -ENOENT;
      }
      for (const auto& [key, len] : mappings_) {
        if (key.first == c->dst_ioas_id && key.second < c->dst_iova + c->length &&
            c->dst_iova < key.second + len) {
          return -EEXIST;
        }
      }
      mappings_[{c->dst_ioas_id, c->dst_iova}] = c->length;
      ++copies_;
      return 0;
    }
    case uapi::kIommuIoasUnmap: {
      // io_pagetable.c iopt_unmap_iova_range: every mapping in the range must lie wholly inside
      // it (a range that cuts one is ENOENT), and a range holding none is ENOENT too.
      auto* c = static_cast<uapi::IommuIoasUnmap*>(arg);
      if (on_unmap) on_unmap(c->ioas_id, c->iova, c->length);
      if (ioas_.count(c->ioas_id) == 0) return -ENOENT;
      const uint64_t end = c->iova + c->length;
      std::vector<std::pair<uint32_t, uint64_t>> inside;
      uint64_t unmapped = 0;
      for (const auto& [key, len] : mappings_) {
        if (key.first != c->ioas_id || key.second >= end || key.second + len <= c->iova) continue;
        if (key.second < c->iova || key.second + len > end) {
          ++unmap_splits_refused_;
          return -ENOENT;
        }
        inside.push_back(key);
        unmapped += len;
      }
      if (inside.empty()) return -ENOENT;
      for (const auto& key : inside) mappings_.erase(key);
      // A page mapped again starts with a clean IOPTE.
      for (auto& [id, h] : hwpts_) {
        if (h.ioas == c->ioas_id) {
          std::erase_if(h.written, [&](uint64_t p) { return p >= c->iova && p < end; });
        }
      }
      ++unmap_calls_;
      c->length = unmapped;
      return 0;
    }
    case uapi::kIommuGetHwInfo: {
      if (fd != iommufd_) return -ENOTTY;
      auto* c = static_cast<uapi::IommuHwInfo*>(arg);
      if (!bound_ || c->dev_id != dev_id_) return -ENOENT;
      c->out_capabilities = hw_capabilities;
      return 0;
    }
    case uapi::kIommuHwptSetDirtyTracking: {
      if (fd != iommufd_) return -ENOTTY;
      auto* c = static_cast<uapi::IommuHwptSetDirtyTracking*>(arg);
      auto it = hwpts_.find(c->hwpt_id);
      if (it == hwpts_.end()) return -ENOENT;
      if (!it->second.dirty_capable) return -EOPNOTSUPP;
      it->second.tracking = (c->flags & uapi::kDirtyTrackingEnable) != 0;
      it->second.written.clear();  // enabling starts from a clean snapshot
      return 0;
    }
    case uapi::kIommuHwptGetDirtyBitmap: {
      if (fd != iommufd_) return -ENOTTY;
      auto* c = static_cast<uapi::IommuHwptGetDirtyBitmap*>(arg);
      auto it = hwpts_.find(c->hwpt_id);
      if (it == hwpts_.end()) return -ENOENT;
      if (!it->second.dirty_capable) return -EOPNOTSUPP;
      if (c->page_size == 0 || c->length == 0 || c->iova % c->page_size != 0 ||
          c->length % c->page_size != 0) {
        return -EINVAL;
      }
      ++dirty_reads_;
      // The user's bitmap, as the kernel's copy_to_user would reach it (an address in the
      // caller's own memory: the simulation runs in the same process).
      auto* bits = reinterpret_cast<uint64_t*>(  // NOLINT(performance-no-int-to-ptr)
          static_cast<uintptr_t>(c->data));
      // io_pagetable.c: the walk stops at the first page no mapping covers, and the call still
      // returns 0 (7.3 drops iova_bitmap_for_each's result).
      for (uint64_t i = 0; i < c->length / c->page_size; ++i) {
        const uint64_t page = c->iova + i * c->page_size;
        if (!Covered(it->second.ioas, page)) break;
        if (it->second.written.erase(page) != 0) bits[i / 64] |= 1ull << (i % 64);
      }
      return 0;
    }
    case uapi::kVfioDeviceBindIommufd: {
      if (fd != vfio_fd_) return -ENOTTY;
      auto* c = static_cast<uapi::VfioDeviceBindIommufd*>(arg);
      if (c->iommufd != iommufd_) return -EBADF;
      if (bound_) return -EBUSY;
      bound_ = true;
      dev_id_ = next_id_++;
      c->out_devid = dev_id_;
      return 0;
    }
    case uapi::kVfioDeviceAttachIommufdPt: {
      if (fd != vfio_fd_ || !bound_) return -EINVAL;
      auto* c = static_cast<uapi::VfioDeviceAttachIommufdPt*>(arg);
      std::optional<uint32_t> pasid;
      if ((c->flags & uapi::kVfioDeviceAttachPasid) != 0) pasid = c->pasid;
      if (hwpts_.count(c->pt_id) == 0) return -ENOENT;
      Reattach(pasid, c->pt_id);  // attaching over an attachment replaces it
      return 0;
    }
    case uapi::kVfioDeviceDetachIommufdPt: {
      if (fd != vfio_fd_ || !bound_) return -EINVAL;
      auto* c = static_cast<uapi::VfioDeviceDetachIommufdPt*>(arg);
      std::optional<uint32_t> pasid;
      if ((c->flags & uapi::kVfioDeviceAttachPasid) != 0) pasid = c->pasid;
      Reattach(pasid, 0);
      return 0;
    }
    case uapi::kVfioDeviceGetRegionInfo: {
      if (fd != vfio_fd_) return -ENOTTY;
      auto* c = static_cast<uapi::VfioRegionInfo*>(arg);
      if (c->index != uapi::kVfioPciConfigRegionIndex) return -EINVAL;
      c->offset = kConfigRegionOffset;
      c->size = 4096;
      return 0;
    }
    case uapi::kVfioDeviceSetIrqs: {
      if (fd != vfio_fd_) return -ENOTTY;
      auto* c = static_cast<uapi::VfioIrqSetEventfd*>(arg);
      // vfio-pci: ERR and REQ take one eventfd each (vfio_pci_set_err_trigger/req_trigger).
      if (c->argsz < sizeof(*c) || c->count != 1 || c->start != 0 ||
          c->flags != (uapi::kVfioIrqSetDataEventfd | uapi::kVfioIrqSetActionTrigger) ||
          (c->index != uapi::kVfioPciErrIrqIndex && c->index != uapi::kVfioPciReqIrqIndex)) {
        return -EINVAL;
      }
      irq_eventfds_[c->index] = c->eventfd;
      return 0;
    }
    case uapi::kVfioDeviceReset: {
      if (fd != vfio_fd_) return -ENOTTY;
      // pci_reset_function: save state, FLR, restore state. The function forgets its tags and
      // clears PRI Enable; the restore sets Enable again only if it was set when saved.
      const bool was_enabled = device_->enabled();
      ++resets_;
      device_->Flr();
      device_->SetEnabled(was_enabled);
      return 0;
    }
    default:
      return -ENOTTY;
  }
}

void SimKernel::DeliverRequests(const std::vector<PageRequest>& requests) {
  for (const PageRequest& r : requests) {
    std::vector<PageRequest>& part = partial_[r.prg_index];
    part.push_back(r);
    if (!r.last) continue;
    Group g;
    g.requests = std::move(part);
    partial_.erase(r.prg_index);
    g.pasid = r.pasid;
    auto at = attached_.find(r.pasid);
    const Hwpt* h = nullptr;
    if (at != attached_.end()) {
      auto it = hwpts_.find(at->second);
      if (it != hwpts_.end()) h = &it->second;
    }
    FaultQueue* q = h != nullptr && h->fault != 0 ? QueueById(h->fault) : nullptr;
    if (q == nullptr) {
      // No handler for this attachment (io-pgfault.c answers the group itself).
      Answer(g, ResponseCode::kInvalid);
      ++auto_responses_;
      continue;
    }
    g.hwpt = at->second;
    q->queued.push_back(std::move(g));
  }
}

ssize_t SimKernel::Read(int fd, void* buf, size_t len) {
  FaultQueue* q = QueueByFd(fd);
  if (q == nullptr) return -EBADF;
  constexpr size_t kRec = sizeof(uapi::PageFault);
  if (len % kRec != 0) return -ESPIPE;
  size_t done = 0;
  auto* out = static_cast<unsigned char*>(buf);
  while (!q->queued.empty()) {
    Group& g = q->queued.front();
    size_t need = g.requests.size() * kRec;
    if (done + need > len) {
      if (done == 0) return -EINVAL;
      break;
    }
    // xa_alloc: the lowest free cookie, so one answered (or auto-answered) is reused at once.
    uint32_t cookie = 1;
    while (q->read.count(cookie) != 0) ++cookie;
    for (const PageRequest& r : g.requests) {
      uapi::PageFault f{};
      f.flags = (r.pasid ? uint32_t{uapi::kPgfaultPasidValid} : 0u) |
                (r.last ? uint32_t{uapi::kPgfaultLastPage} : 0u);
      f.dev_id = dev_id_;
      f.pasid = r.pasid.value_or(0);
      f.grpid = r.prg_index;
      f.perm = r.perm;
      f.addr = r.addr;
      f.cookie = cookie;
      std::memcpy(out + done, &f, kRec);
      done += kRec;
    }
    q->read[cookie] = std::move(g);
    q->queued.pop_front();
  }
  return static_cast<ssize_t>(done);
}

ssize_t SimKernel::Write(int fd, const void* buf, size_t len) {
  FaultQueue* q = QueueByFd(fd);
  if (q == nullptr) return -EBADF;
  constexpr size_t kResp = sizeof(uapi::PageResponse);
  if (len % kResp != 0) return -EINVAL;
  size_t done = 0;
  const auto* in = static_cast<const unsigned char*>(buf);
  while (done < len) {
    uapi::PageResponse r{};
    std::memcpy(&r, in + done, kResp);
    auto it = q->read.find(r.cookie);
    if (it == q->read.end() || r.code > uapi::kRespInvalid) {
      ++refused_responses_;
      return done == 0 ? -EINVAL : static_cast<ssize_t>(done);
    }
    Answer(it->second,
           r.code == uapi::kRespSuccess ? ResponseCode::kSuccess : ResponseCode::kInvalid);
    q->read.erase(it);
    done += kResp;
  }
  return static_cast<ssize_t>(done);
}

size_t SimKernel::Queued(int fault_fd) const {
  for (const auto& [id, q] : faults_) {
    if (q.fd == fault_fd) return q.queued.size();
  }
  return 0;
}

size_t SimKernel::ReadAndUnanswered() const {
  size_t n = 0;
  for (const auto& [id, q] : faults_) n += q.read.size();
  return n;
}

uint32_t SimKernel::AttachedHwpt(std::optional<uint32_t> pasid) const {
  auto it = attached_.find(pasid);
  return it == attached_.end() ? 0 : it->second;
}

namespace {
SimKernel* g_switch_kernel = nullptr;  // the kernel the simulated switch module acts on
}  // namespace

ssize_t SimKernel::Pread(int fd, void* buf, size_t len, uint64_t offset) {
  if (fd != vfio_fd_) return -EBADF;
  if (offset != kConfigRegionOffset + uapi::kPciCommand || len != sizeof(pci_command_)) {
    return -EINVAL;
  }
  if (fail_config_access != 0) return -fail_config_access;
  const uint16_t le = htole16(pci_command_);  // config space is little-endian
  std::memcpy(buf, &le, sizeof(le));
  return static_cast<ssize_t>(len);
}

ssize_t SimKernel::Pwrite(int fd, const void* buf, size_t len, uint64_t offset) {
  if (fd != vfio_fd_) return -EBADF;
  if (offset != kConfigRegionOffset + uapi::kPciCommand || len != sizeof(pci_command_)) {
    return -EINVAL;
  }
  if (fail_config_access != 0) return -fail_config_access;
  uint16_t le = 0;
  std::memcpy(&le, buf, sizeof(le));
  const uint16_t next = le16toh(le);
  if ((pci_command_ & uapi::kPciCommandMaster) != 0 && (next & uapi::kPciCommandMaster) == 0 &&
      before_bus_master_clear) {
    before_bus_master_clear();
  }
  WriteCommandAsOwner(next);
  return static_cast<ssize_t>(len);
}

void SimKernel::WriteCommandAsOwner(uint16_t value) {
  pci_command_ = value;
  // vfio-pci passes Bus Master Enable to the device (vfio_pci_config.c): the function stops or
  // resumes issuing requests.
  if ((pci_command_ & uapi::kPciCommandMaster) != 0) {
    device_->ResumeDma();
  } else {
    device_->HaltDma();
  }
}

int SimKernel::SwitchModuleEntry(const iopfd_switch_request* req) {
  SimKernel* k = g_switch_kernel;
  if (k == nullptr || req == nullptr || req->size < sizeof(iopfd_switch_request)) return -EINVAL;
  ++k->switch_calls_;
  // What an owner's module does: a replace on the device it names, by its own means (here the
  // VFIO attach ioctl on the owner's device fd).
  uapi::VfioDeviceAttachIommufdPt cmd{};
  cmd.argsz = sizeof(cmd);
  cmd.pt_id = req->hwpt_id;
  if (req->pasid != IOPFD_SWITCH_NO_PASID) {
    cmd.flags = uapi::kVfioDeviceAttachPasid;
    cmd.pasid = req->pasid;
  }
  if (req->device_id != k->dev_id_) return -ENODEV;
  return k->Ioctl(k->vfio_fd_, uapi::kVfioDeviceAttachIommufdPt, &cmd);
}

int SimKernel::ResetModuleEntry(const iopfd_switch_request* req) {
  SimKernel* k = g_switch_kernel;
  if (k == nullptr || req == nullptr || req->device_id != k->dev_id_) return -ENODEV;
  ++k->switch_calls_;
  return k->Ioctl(k->vfio_fd_, uapi::kVfioDeviceReset, nullptr);
}

Syscalls::SwitchModule SimKernel::LoadSwitchModule(const std::string& path, std::string* error) {
  if (path != kSwitchModule && path != kSwitchModuleNoReset) {
    *error = path + ": cannot open shared object file: No such file or directory";
    return {};
  }
  g_switch_kernel = this;
  SwitchModule m;
  m.attach = &SwitchModuleEntry;
  if (path == kSwitchModule) m.reset = &ResetModuleEntry;
  return m;
}

DeviceConfig SimKernel::SetUpAsOwner(const std::string& name,
                                     const std::vector<std::optional<uint32_t>>& pasids,
                                     uint64_t size, bool with_device_fd, ListenFds* fds) {
  DeviceConfig c = SimVfioDevice(name, pasids, size);
  c.mode = AttachMode::kAdopt;
  c.vfio = {};
  int iommufd = Open("/dev/iommu", 0);
  int vfio = Open(kCdev, 0);
  uapi::VfioDeviceBindIommufd bind{};
  bind.argsz = sizeof(bind);
  bind.iommufd = iommufd;
  Ioctl(vfio, uapi::kVfioDeviceBindIommufd, &bind);
  uapi::IommuFaultAlloc fault{};
  fault.size = sizeof(fault);
  Ioctl(iommufd, uapi::kIommuFaultQueueAlloc, &fault);
  for (SpaceConfig& sp : c.spaces) {
    uapi::IommuIoasAlloc ioas{};
    ioas.size = sizeof(ioas);
    Ioctl(iommufd, uapi::kIommuIoasAlloc, &ioas);
    uapi::IommuHwptAlloc hwpt{};
    hwpt.size = sizeof(hwpt);
    hwpt.flags = uapi::kHwptFaultIdValid;
    hwpt.dev_id = bind.out_devid;
    hwpt.pt_id = ioas.out_ioas_id;
    hwpt.fault_id = fault.out_fault_id;
    Ioctl(iommufd, uapi::kIommuHwptAlloc, &hwpt);
    uapi::VfioDeviceAttachIommufdPt attach{};
    attach.argsz = sizeof(attach);
    attach.pt_id = hwpt.out_hwpt_id;
    if (sp.pasid) {
      attach.flags = uapi::kVfioDeviceAttachPasid;
      attach.pasid = *sp.pasid;
    }
    Ioctl(vfio, uapi::kVfioDeviceAttachIommufdPt, &attach);
    sp.ioas_id = ioas.out_ioas_id;
    sp.hwpt_id = hwpt.out_hwpt_id;
  }
  c.adopt.iommufd_fd = name + ".iommufd";
  c.adopt.fault_fd = name + ".fault";
  c.adopt.device_id = bind.out_devid;
  fds->Add(c.adopt.iommufd_fd, UniqueFd(iommufd));
  fds->Add(c.adopt.fault_fd, UniqueFd(static_cast<int>(fault.out_fault_fd)));
  if (with_device_fd) {
    c.adopt.device_fd = name + ".device";
    fds->Add(c.adopt.device_fd, UniqueFd(vfio));
  } else {
    c.adopt.switch_module = kSwitchModule;
    c.adopt.switch_target = name;
    // The owner keeps its device fd (closed with the kernel); the simulated module uses the
    // kernel's record of it.
    spare_.push_back(vfio);
  }
  return c;
}

DeviceConfig SimVfioDevice(const std::string& name,
                           const std::vector<std::optional<uint32_t>>& pasids, uint64_t size) {
  DeviceConfig c;
  c.name = name;
  c.mode = AttachMode::kVfio;
  c.vfio.cdev = SimKernel::kCdev;
  for (const std::optional<uint32_t>& pasid : pasids) {
    SpaceConfig s;
    s.pasid = pasid;
    RegionConfig r;
    r.iova = 0x100000;
    r.size = size;
    r.backing = BackingKind::kAnonymous;
    r.access = uapi::kPermRead | uapi::kPermWrite;
    r.page_size = 4096;
    s.regions.push_back(r);
    c.spaces.push_back(s);
  }
  return c;
}

bool SimKernel::Covered(uint32_t ioas, uint64_t iova) const {
  for (const auto& [key, len] : mappings_) {
    if (key.first == ioas && iova >= key.second && iova - key.second < len) return true;
  }
  return false;
}

void SimKernel::DeviceWrites(uint32_t ioas, uint64_t iova) {
  const uint64_t page = iova & ~uint64_t{4095};
  if (!Covered(ioas, page)) return;
  for (auto& [id, h] : hwpts_) {
    if (h.ioas == ioas && h.tracking) h.written.insert(page);
  }
}

}  // namespace iopfd::sim
