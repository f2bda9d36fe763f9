// Memory-access metrics of the emulated kernels (SIMT_METRICS builds only: tools/gpu_model_sim.py,
// `make gpu-model`): what a GPU profiler counts per warp-wide memory instruction, from the
// addresses the emulated threads really touch.
//
// The build compiles everything with GCC's kernel-address instrumentation and no runtime: every
// load and store calls __asan_{load,store}{1,2,4,8,16,N}_noabort(addr[, size]), defined here.
// Outside a kernel (no fiber running) the hook returns at once. Inside, the access is classified
// by its address: the fiber's own stack (the host compiler's locals: registers on a GPU) and the
// emulator's Fiber/Block objects are dropped, the module's TLS block of this OS thread is shared
// memory (every __shared__ is a static thread_local), everything else is global memory. Each
// access is kept with its site (the instrumented instruction's address) and, at the end of the
// block, the lanes of a warp are grouped into requests: the k-th execution of one site by every
// lane of the warp is one warp-wide instruction (as on a GPU when the warp does not diverge; a
// lane that skips an execution shifts its later ones, which the report states). Per request:
//   global: 32-byte sectors touched by the active lanes (Nsight Compute's sectors per request),
//   shared: wavefronts, the passes the banks need: the warp is split into phases of 128 bytes
//           (32 lanes for 4-byte accesses, 16 for 8-byte, 8 for 16-byte; 1- and 2-byte accesses
//           as 4-byte words), and a phase takes as many wavefronts as the most distinct 4-byte
//           words any one of the 32 banks must deliver (lanes reading the same word share it).
// Python reads the totals per site with _C_sim.metrics() and names the sites (addr2line).
#pragma once

#if SIMT_METRICS
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace simt {

struct Access {
  uintptr_t site;
  uintptr_t addr;
  uint32_t size;
  uint32_t flags;  // bit 0: store, bit 1: shared
};

// The fiber's record of its accesses: a plain malloc'd array, so the hook itself calls nothing
// instrumented (a std::vector's growth would re-enter it).
struct AccessLog {
  Access* a = nullptr;
  size_t n = 0, cap = 0;
};

struct SiteKey {
  uintptr_t site;
  uint32_t size, flags;
  bool operator<(const SiteKey& o) const { return std::tie(site, size, flags) < std::tie(o.site, o.size, o.flags); }
};
struct SiteTotals {
  int64_t requests = 0, lanes = 0, bytes = 0, sectors = 0, wavefronts = 0, ideal = 0;
};

struct Metrics {
  std::mutex mu;
  std::map<SiteKey, SiteTotals> sites;
  std::atomic<bool> enabled{true};
};
inline Metrics& metrics() {
  static Metrics m;
  return m;
}

// Module base address, for turning sites into offsets addr2line understands.
inline uintptr_t module_base() {
  static const uintptr_t base = [] {
    Dl_info info{};
    dladdr(reinterpret_cast<void*>(&metrics), &info);
    return reinterpret_cast<uintptr_t>(info.dli_fbase);
  }();
  return base;
}

// 32-byte sectors touched by one request's lanes.
inline int64_t request_sectors(const Access* const* lanes, int n) {
  uintptr_t sec[32 * 2];
  int k = 0;
  for (int i = 0; i < n; ++i) {
    const uintptr_t lo = lanes[i]->addr >> 5, hi = (lanes[i]->addr + lanes[i]->size - 1) >> 5;
    for (uintptr_t s = lo; s <= hi && k < 64; ++s) sec[k++] = s;
  }
  std::sort(sec, sec + k);
  return std::unique(sec, sec + k) - sec;
}

// Shared-memory wavefronts of one request (the model in this file's header).
inline int64_t request_wavefronts(const Access* const* lanes, const int* lane_ids, int n, int size) {
  const int per_phase = size <= 4 ? 32 : 128 / size;
  int64_t total = 0;
  for (int phase = 0; phase < 32 / per_phase; ++phase) {
    uintptr_t words[32 * 4];
    int k = 0;
    for (int i = 0; i < n; ++i) {
      if (lane_ids[i] / per_phase != phase) continue;
      const uintptr_t lo = lanes[i]->addr >> 2, hi = (lanes[i]->addr + lanes[i]->size - 1) >> 2;
      for (uintptr_t w = lo; w <= hi && k < 128; ++w) words[k++] = w;
    }
    if (k == 0) continue;
    std::sort(words, words + k);
    k = static_cast<int>(std::unique(words, words + k) - words);
    int per_bank[32] = {0};
    int most = 0;
    for (int i = 0; i < k; ++i) most = std::max(most, ++per_bank[words[i] & 31]);
    total += most;
  }
  return total;
}

// Groups one block's accesses into warp-wide requests and adds them to the totals.
inline void metrics_block_done(std::vector<AccessLog*>& logs, int nthreads) {
  struct Rec {
    uintptr_t site;
    uint32_t size, flags;
    uint32_t occ;
    int lane;
    const Access* a;
  };
  std::map<SiteKey, SiteTotals> local;
  std::vector<Rec> recs;
  for (int w = 0; w * 32 < nthreads; ++w) {
    recs.clear();
    for (int t = w * 32; t < std::min(nthreads, w * 32 + 32); ++t) {
      AccessLog& log = *logs[t];
      std::map<SiteKey, uint32_t> occ;
      for (size_t i = 0; i < log.n; ++i) {
        const Access& a = log.a[i];
        const uint32_t k = occ[SiteKey{a.site, a.size, a.flags}]++;
        recs.push_back(Rec{a.site, a.size, a.flags, k, t - w * 32, &a});
      }
    }
    std::sort(recs.begin(), recs.end(), [](const Rec& x, const Rec& y) {
      return std::tie(x.site, x.size, x.flags, x.occ, x.lane) < std::tie(y.site, y.size, y.flags, y.occ, y.lane);
    });
    for (size_t i = 0; i < recs.size();) {
      size_t j = i;
      const Access* lanes[32];
      int ids[32];
      int n = 0;
      while (j < recs.size() && recs[j].site == recs[i].site && recs[j].size == recs[i].size &&
             recs[j].flags == recs[i].flags && recs[j].occ == recs[i].occ) {
        if (n < 32) {
          lanes[n] = recs[j].a;
          ids[n] = recs[j].lane;
          ++n;
        }
        ++j;
      }
      SiteTotals& s = local[SiteKey{recs[i].site, recs[i].size, recs[i].flags}];
      s.requests += 1;
      s.lanes += n;
      s.bytes += static_cast<int64_t>(n) * recs[i].size;
      if (recs[i].flags & 2) {
        s.wavefronts += request_wavefronts(lanes, ids, n, static_cast<int>(recs[i].size));
        s.ideal += std::max<int64_t>(1, (static_cast<int64_t>(n) * recs[i].size + 127) / 128);
      } else {
        s.sectors += request_sectors(lanes, n);
        s.ideal += std::max<int64_t>(1, (static_cast<int64_t>(n) * recs[i].size + 31) / 32);
      }
      i = j;
    }
  }
  for (auto* log : logs) log->n = 0;
  Metrics& m = metrics();
  std::lock_guard<std::mutex> lock(m.mu);
  for (const auto& [k, v] : local) {
    SiteTotals& s = m.sites[k];
    s.requests += v.requests;
    s.lanes += v.lanes;
    s.bytes += v.bytes;
    s.sectors += v.sectors;
    s.wavefronts += v.wavefronts;
    s.ideal += v.ideal;
  }
}

}  // namespace simt
#endif
