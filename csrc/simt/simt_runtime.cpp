// The SIMT layer's scheduler (simt.h says what it emulates and how).
#include "simt.h"
#include "simt_metrics.h"

#include <link.h>
#include <sys/mman.h>

#if !defined(__x86_64__)
#error "the SIMT layer's fiber switch is written for x86-64"
#endif

#include <chrono>
#include <deque>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

namespace simt {

Config& config() {
  static Config c;
  return c;
}
Stats& stats() {
  static Stats s;
  return s;
}

constexpr int kLaneBytes = 128;  // per lane and warp collective: a WMMA operand share each
enum class State : int { ready, block_bar, warp_bar, sleeping, done };

// Fiber switch: saves the callee-saved registers, MXCSR and the x87 control word on the current
// stack, stores the stack pointer in *save and continues on the stack `load` (a plain function
// call for the compiler; ~10 ns where glibc's swapcontext makes a signal-mask system call).
extern "C" __attribute__((visibility("hidden"))) void simt_switch(void** save, void* load);
extern "C" __attribute__((visibility("hidden"))) void simt_fiber_start();
asm(R"(
  .text
  .p2align 4
  .globl simt_switch
  .hidden simt_switch
  .type simt_switch,@function
simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size simt_switch, .-simt_switch

  .p2align 4
  .globl simt_fiber_start
  .hidden simt_fiber_start
  .type simt_fiber_start,@function
simt_fiber_start:
  movq %r12, %rdi
  call simt_fiber_main
  ud2
  .size simt_fiber_start, .-simt_fiber_start
)");

struct Fiber {
  void* sp = nullptr;  // saved stack pointer while switched out
  Block* block = nullptr;
  Ctx ctx;
  int tid = 0;
  // Written by the fiber and read by its scheduler (and the reverse): atomics keep TSan quiet
  // about the emulator's own bookkeeping, which the fiber switches order anyway.
  std::atomic<State> state{State::ready};
  std::atomic<const char*> site_file{nullptr};
  std::atomic<int> site_line{0};
  // Counted by the fiber itself (the emulator's TSan annotations need no shared counter):
  unsigned warp_calls = 0;  // warp-exchange calls: picks the double buffer
  unsigned bar_gen = 0;     // block barriers reached
  unsigned warp_gen = 0;    // warp barriers reached
  // cp.async (ptx.h): copies issued and not yet landed, in order; the sizes of the committed
  // groups, oldest first; copies issued since the last commit.
  struct CpCopy {
    void* dst;
    unsigned char data[16];
  };
  std::deque<CpCopy> cp_queue;
  std::deque<int> cp_groups;
  int cp_open = 0;
  void* stack = nullptr;
  size_t stack_size = 0;
#if SIMT_TSAN
  void* tsan = nullptr;
#endif
#if SIMT_ASAN
  void* fake_stack = nullptr;
#endif
#if SIMT_METRICS
  AccessLog log;
  Fiber() = default;
  Fiber(const Fiber&) = delete;
  ~Fiber() { std::free(log.a); }
#endif
};

struct Block {
  void* sched = nullptr;  // the scheduler's saved stack pointer
  std::vector<Fiber> fibers;
  int nthreads = 0, nwarps = 0;
  unsigned bar_gen = 0;
  std::vector<unsigned> warp_gen;
  std::vector<unsigned char> exchange;  // [warp][2][32][8]
  const std::function<void()>* kernel = nullptr;
  std::exception_ptr error;
  uint64_t rng = 0;

#if SIMT_TSAN
  void* sched_tsan = nullptr;
  // One sync object per barrier generation (mod 4: a fiber can be at most one generation ahead
  // of another), so a fiber leaving generation g never acquires releases of generation g + 1.
  char bar_sync[4];
  char start_sync;
  std::vector<char> warp_sync;  // [warp][4]
#endif
#if SIMT_ASAN
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  void* sched_fake = nullptr;
#endif
#if SIMT_METRICS
  uintptr_t shared_lo = 0, shared_hi = 0;  // this OS thread's TLS block: the block's shared memory
#endif
};

thread_local std::atomic<Fiber*> tl_fiber{nullptr};

namespace {
std::atomic<bool> g_abort{false};

struct Abort {};  // unwinds a fiber when another block failed

Fiber& cur(const char* what) {
  Fiber* f = tl_fiber.load(std::memory_order_relaxed);
  if (f == nullptr) fail(std::string(what) + " called outside a kernel");
  return *f;
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield_to_scheduler(Fiber& f) {
  Block& b = *f.block;
#if SIMT_TSAN
  __tsan_switch_to_fiber(b.sched_tsan, 0);  // fiber -> scheduler: its bookkeeping is ordered
#endif
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&f.fake_stack, b.sched_bottom, b.sched_size);
#endif
  simt_switch(&f.sp, b.sched);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &b.sched_bottom, &b.sched_size);
#endif
  // tl_fiber == &f again: only the scheduler writes it
  if (g_abort.load(std::memory_order_relaxed)) throw Abort{};
}

}  // namespace
}  // namespace simt

extern "C" __attribute__((visibility("hidden"), used)) void simt_fiber_main(simt::Fiber* fp) {
  using namespace simt;
  Fiber& f = *fp;
  Block& b = *f.block;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.sched_bottom, &b.sched_size);
#endif
#if SIMT_TSAN
  __tsan_acquire(&b.start_sync);
#endif
  try {
    (*b.kernel)();
    if (!f.cp_queue.empty())
      fail("cp.async: thread " + std::to_string(f.tid) + " exited with " + std::to_string(f.cp_queue.size()) +
           " copies no cp.async.wait_group landed");
  } catch (const Abort&) {
  } catch (...) {
    if (!b.error) b.error = std::current_exception();
    g_abort.store(true);
  }
  f.state.store(State::done);
#if SIMT_TSAN
  __tsan_switch_to_fiber(b.sched_tsan, 0);
#endif
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(nullptr, b.sched_bottom, b.sched_size);
#endif
  void* dead = nullptr;
  simt_switch(&dead, b.sched);
  __builtin_unreachable();
}

namespace simt {
namespace {

bool same_site(const Fiber& a, const Fiber& b) {
  return a.site_line.load() == b.site_line.load() && a.site_file.load() == b.site_file.load();
}

std::string site(const Fiber& f) {
  const char* file = f.site_file.load();
  if (file == nullptr) return "?";
  std::string s(file);
  const auto slash = s.rfind('/');
  return (slash == std::string::npos ? s : s.substr(slash + 1)) + ":" + std::to_string(f.site_line.load());
}

uint64_t next_rand(uint64_t& s) {  // splitmix64
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// ---- Shared memory: the module's TLS block is the block's shared memory (every __shared__
// variable is a static thread_local of this module); poison it before each block.
struct TlsModule {
  size_t modid = 0, size = 0;
};
int find_tls(struct dl_phdr_info* info, size_t, void* data) {
  auto* out = static_cast<std::pair<uintptr_t, TlsModule>*>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
    if (out->first >= lo && out->first < hi) {
      for (int j = 0; j < info->dlpi_phnum; ++j)
        if (info->dlpi_phdr[j].p_type == PT_TLS) {
          out->second.modid = info->dlpi_tls_modid;
          out->second.size = info->dlpi_phdr[j].p_memsz;
        }
      return 1;
    }
  }
  return 0;
}
const TlsModule& tls_module() {
  static const TlsModule m = [] {
    std::pair<uintptr_t, TlsModule> q{reinterpret_cast<uintptr_t>(&find_tls), {}};
    dl_iterate_phdr(find_tls, &q);
    return q.second;
  }();
  return m;
}
}  // namespace
}  // namespace simt

extern "C" void* __tls_get_addr(void*);

namespace simt {
namespace {
void poison_shared() {
  const TlsModule& m = tls_module();
  if (m.size == 0) return;
  Fiber* keep = tl_fiber.load();  // the layer's own thread_local lives in the same block
  size_t ti[2] = {m.modid, 0};
  std::memset(__tls_get_addr(ti), 0xff, m.size);
  new (&tl_fiber) std::atomic<Fiber*>(keep);
}

size_t stack_bytes() {
#if SIMT_ASAN || SIMT_TSAN
  return 512 * 1024;
#else
  return 128 * 1024;
#endif
}

// Per-OS-thread fiber stacks, kept between launches.
struct Stacks {
  std::vector<void*> s;
  ~Stacks() {
    for (void* p : s) {
#if SIMT_ASAN
      // ASan's shadow keeps the fibers' stack redzones: clear it before the range is reused.
      __asan_unpoison_memory_region(p, stack_bytes());
#endif
      munmap(p, stack_bytes());
    }
  }
  void* get(int i) {
    while (static_cast<int>(s.size()) <= i) {
      void* p = mmap(nullptr, stack_bytes(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (p == MAP_FAILED) fail("cannot allocate fiber stacks");
      s.push_back(p);
    }
    return s[i];
  }
};

void describe_and_fail(Block& b, const std::string& why) {
  std::ostringstream os;
  os << "simt: block (" << b.fibers[0].ctx.block.x << "," << b.fibers[0].ctx.block.y << ","
     << b.fibers[0].ctx.block.z << "): " << why << ";";
  int shown = 0;
  for (auto& f : b.fibers) {
    const State s = f.state.load();
    if (s == State::done || shown >= 6) continue;
    ++shown;
    os << " thread " << f.tid << (s == State::block_bar ? " at __syncthreads " : s == State::warp_bar ? " at a warp collective " : " sleeping at ")
       << site(f) << ";";
  }
  fail(os.str());
}

void run_block(Block& b, Stacks& stacks) {
  const Config& cfg = config();
  const int nt = b.nthreads;
  std::vector<int> order(nt);
  for (int i = 0; i < nt; ++i) order[i] = cfg.order == Order::reverse ? nt - 1 - i : i;
  poison_shared();
#if SIMT_METRICS
  {
    const TlsModule& m = tls_module();
    size_t ti[2] = {m.modid, 0};
    b.shared_lo = m.size ? reinterpret_cast<uintptr_t>(__tls_get_addr(ti)) : 0;
    b.shared_hi = b.shared_lo + m.size;
  }
#endif
#if SIMT_TSAN
  b.sched_tsan = __tsan_get_current_fiber();
  __tsan_release(&b.start_sync);
#endif
  for (int i = 0; i < nt; ++i) {
    Fiber& f = b.fibers[i];
    f.stack = stacks.get(i);
    f.stack_size = stack_bytes();
    // Initial frame, as simt_switch leaves it: control words, r15..r12, rbx, rbp, return address
    // (simt_fiber_start, which passes r12 = &f to simt_fiber_main); 16-byte aligned after the ret.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + f.stack_size) & ~uintptr_t(15);
    uint64_t* frame = reinterpret_cast<uint64_t*>(top - 64);
    uint32_t mxcsr = 0;
    uint16_t fpcw = 0;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    frame[0] = mxcsr | (static_cast<uint64_t>(fpcw) << 32);
    frame[1] = frame[2] = frame[3] = frame[5] = frame[6] = 0;                   // r15 r14 r13 rbx rbp
    frame[4] = reinterpret_cast<uint64_t>(&f);                                  // r12
    frame[7] = reinterpret_cast<uint64_t>(&simt_fiber_start);                   // return address
    f.sp = frame;
#if SIMT_TSAN
    f.tsan = __tsan_create_fiber(0);
#endif
  }
  auto resume = [&](Fiber& f) {
    tl_fiber = &f;
#if SIMT_TSAN
    // No order from the scheduler to a fiber: the threads of a block are concurrent (each fiber
    // acquires b.start_sync once instead, released after the poisoning).
    __tsan_switch_to_fiber(f.tsan, 1);
#endif
#if SIMT_ASAN
    __sanitizer_start_switch_fiber(&b.sched_fake, f.stack, f.stack_size);
#endif
    simt_switch(&b.sched, f.sp);
#if SIMT_ASAN
    __sanitizer_finish_switch_fiber(b.sched_fake, nullptr, nullptr);
#endif
    tl_fiber = nullptr;
  };
  // A warp whose lanes all wait at the same collective is released and run again at once (in
  // the block's order), so warp collectives cost no pass over the whole block.
  auto release_warp = [&](int w) {
    const int lo = w * 32, hi = std::min(nt, lo + 32);
    for (int t = lo; t < hi; ++t)
      if (b.fibers[t].state.load() != State::warp_bar) return false;
    for (int t = lo; t < hi; ++t)
      if (!same_site(b.fibers[t], b.fibers[lo])) describe_and_fail(b, "lanes of a warp wait at different collectives");
    for (int t = lo; t < hi; ++t) {
      b.fibers[t].site_file.store(nullptr);
      b.fibers[t].state.store(State::ready);
    }
    ++b.warp_gen[w];
    return true;
  };
  auto drain_warp = [&](int w) {
    while (!b.error && release_warp(w))
      for (int i : order)
        if (i / 32 == w && b.fibers[i].state.load() == State::ready) resume(b.fibers[i]);
  };
  auto spin_start = std::chrono::steady_clock::now();
  bool spinning = false;
  int done = 0;
  while (done < nt && !b.error && !g_abort.load()) {
    if (cfg.order == Order::shuffled)
      for (int i = nt - 1; i > 0; --i) std::swap(order[i], order[next_rand(b.rng) % (i + 1)]);
    int ran = 0, sleepers = 0;
    for (int i : order) {
      Fiber& f = b.fibers[i];
      const State s = f.state.load();
      if (s != State::ready && s != State::sleeping) continue;
      if (s == State::sleeping) ++sleepers;
      else ++ran;
      f.state.store(State::ready);
      resume(f);
      if (f.state.load() == State::warp_bar) drain_warp(i / 32);
      if (b.error) break;
    }
    if (b.error) break;
    // Release the barriers that every thread has reached.
    int at_bar = 0, finished = 0;
    for (auto& f : b.fibers) {
      const State s = f.state.load();
      at_bar += s == State::block_bar;
      finished += s == State::done;
    }
    done = finished;
    if (at_bar > 0 && at_bar + finished == nt) {
      if (finished > 0)
        describe_and_fail(b, "__syncthreads reached by " + std::to_string(at_bar) + " threads while " +
                                 std::to_string(finished) + " have exited");
      for (auto& f : b.fibers)
        if (!same_site(f, b.fibers[0])) describe_and_fail(b, "threads wait at different __syncthreads");
      for (auto& f : b.fibers) {
        f.site_file.store(nullptr);
        f.state.store(State::ready);
      }
      ++b.bar_gen;
      stats().barriers.fetch_add(1, std::memory_order_relaxed);
      ++ran;
    }
    for (int w = 0; w < b.nwarps; ++w) ran += release_warp(w);
    if (done == nt) break;
    if (ran == 0 && sleepers == 0) describe_and_fail(b, "deadlock (no thread can run)");
    if (ran == 0) {  // only spinning threads: wait for another block
      if (!spinning) spin_start = std::chrono::steady_clock::now();
      spinning = true;
      const double waited =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - spin_start).count();
      if (waited < 1e-3)
        std::this_thread::yield();
      else  // leave the core to the block being waited for
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (waited > cfg.spin_timeout_s) describe_and_fail(b, "spin wait longer than the timeout (a hang on the GPU)");
    } else {
      spinning = false;
    }
  }
#if SIMT_TSAN
  for (auto& f : b.fibers) __tsan_destroy_fiber(f.tsan);
#endif
#if SIMT_METRICS
  if (!b.error && done == nt) {
    std::vector<AccessLog*> logs;
    for (auto& f : b.fibers) logs.push_back(&f.log);
    metrics_block_done(logs, nt);
  } else {
    for (auto& f : b.fibers) f.log.n = 0;
  }
#endif
  if (b.error) std::rethrow_exception(b.error);
  if (done < nt && g_abort.load()) throw Abort{};
}
}  // namespace

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

const Ctx& ctx() { return cur("threadIdx/blockIdx").ctx; }

int lane_id() { return cur("lane_id").tid & 31; }

void syncthreads(const std::source_location& where) {
  Fiber& f = cur("__syncthreads");
  [[maybe_unused]] Block& b = *f.block;
  [[maybe_unused]] const unsigned gen = f.bar_gen++;
#if SIMT_TSAN
  __tsan_release(&b.bar_sync[gen % 4]);
#endif
  f.site_file.store(where.file_name());
  f.site_line.store(static_cast<int>(where.line()));
  f.state.store(State::block_bar);
  yield_to_scheduler(f);
#if SIMT_TSAN
  __tsan_acquire(&b.bar_sync[gen % 4]);
#endif
}

void warp_sync(const std::source_location& where) {
  Fiber& f = cur("warp collective");
  Block& b = *f.block;
  const int w = f.tid / 32;
  if (b.nthreads % 32 != 0 && w == b.nwarps - 1) fail("warp collective in a partial warp is not emulated");
  [[maybe_unused]] const unsigned gen = f.warp_gen++;
#if SIMT_TSAN
  __tsan_release(&b.warp_sync[w * 4 + gen % 4]);
#endif
  f.site_file.store(where.file_name());
  f.site_line.store(static_cast<int>(where.line()));
  f.state.store(State::warp_bar);
  yield_to_scheduler(f);
#if SIMT_TSAN
  __tsan_acquire(&b.warp_sync[w * 4 + gen % 4]);
#endif
}

void* warp_exchange(int bytes_per_lane, void** mine) {
  Fiber& f = cur("warp collective");
  Block& b = *f.block;
  const int w = f.tid / 32;
  if (bytes_per_lane > kLaneBytes) fail("warp exchange: too many bytes per lane");
  constexpr size_t per = static_cast<size_t>(32) * kLaneBytes;
  unsigned char* base = b.exchange.data() + (static_cast<size_t>(w) * 2 + (f.warp_calls++ & 1)) * per;
  *mine = base + static_cast<size_t>(f.tid & 31) * bytes_per_lane;
  return base;
}

void cp_async_push(void* dst, const void* data16) {
  Fiber& f = cur("cp.async");
  stats().cp_async.fetch_add(1, std::memory_order_relaxed);
  Fiber::CpCopy c{dst, {}};
  std::memcpy(c.data, data16, 16);
  f.cp_queue.push_back(c);
  ++f.cp_open;
}

void cp_async_commit() {
  Fiber& f = cur("cp.async.commit_group");
  f.cp_groups.push_back(f.cp_open);
  f.cp_open = 0;
}

bool cp_async_next(int keep, void** dst, void* data16) {
  Fiber& f = cur("cp.async.wait_group");
  while (static_cast<int>(f.cp_groups.size()) > keep) {
    if (f.cp_groups.front() == 0) {
      f.cp_groups.pop_front();
      continue;
    }
    const Fiber::CpCopy& c = f.cp_queue.front();
    *dst = c.dst;
    std::memcpy(data16, c.data, 16);
    f.cp_queue.pop_front();
    --f.cp_groups.front();
    return true;
  }
  return false;
}

void nanosleep_yield() {
  Fiber& f = cur("__nanosleep");
  f.state.store(State::sleeping);
  yield_to_scheduler(f);
}

void run_grid(dim3 grid, dim3 block, const std::function<void()>& kernel) {
  const Config cfg = config();
  const int64_t nblocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  const int nt = static_cast<int>(block.x * block.y * block.z);
  if (block.y != 1 || block.z != 1) fail("simt: only 1-D blocks are emulated");
  if (nt <= 0 || nt > 1024) fail("simt: block size must be 1..1024 threads");
  if (grid.y > 65535 || grid.z > 65535) fail("simt: gridDim.y and gridDim.z must be at most 65535");
  stats().launches.fetch_add(1);
  if (nblocks == 0) return;
  const int live = static_cast<int>(std::min<int64_t>(std::max(cfg.live_blocks, 1), nblocks));
  std::atomic<int64_t> next{0};
  std::atomic<int> running{0};
  std::mutex mu;
  std::exception_ptr first;
  g_abort.store(false);
  auto worker = [&] {
    Stacks stacks;
    Block b;
    b.nthreads = nt;
    b.nwarps = (nt + 31) / 32;
    b.fibers = std::vector<Fiber>(nt);
    b.kernel = &kernel;
    b.exchange.assign(static_cast<size_t>(b.nwarps) * 2 * 32 * kLaneBytes, 0);
#if SIMT_TSAN
    b.warp_sync.assign(static_cast<size_t>(b.nwarps) * 4, 0);
#endif
    try {
      for (;;) {
        const int64_t id = next.fetch_add(1);
        if (id >= nblocks || g_abort.load()) break;
        const int now = running.fetch_add(1) + 1;
        int64_t seen = stats().max_live.load();
        while (now > seen && !stats().max_live.compare_exchange_weak(seen, now)) {
        }
        b.bar_gen = 0;
        b.warp_gen.assign(b.nwarps, 0);
        b.error = nullptr;
        b.rng = cfg.seed * 0x100000001b3ull + static_cast<uint64_t>(id) + 1;
        const uint3 bid{static_cast<unsigned>(id % grid.x), static_cast<unsigned>((id / grid.x) % grid.y),
                        static_cast<unsigned>(id / (static_cast<int64_t>(grid.x) * grid.y))};
        for (int t = 0; t < nt; ++t) {
          Fiber& f = b.fibers[t];
          f.block = &b;
          f.tid = t;
          f.ctx = Ctx{uint3{static_cast<unsigned>(t), 0, 0}, bid, block, grid};
          f.state.store(State::ready);
          f.site_file.store(nullptr);
          f.warp_calls = f.bar_gen = f.warp_gen = 0;
          f.cp_queue.clear();
          f.cp_groups.clear();
          f.cp_open = 0;
        }
        run_block(b, stacks);
        running.fetch_sub(1);
        stats().blocks.fetch_add(1, std::memory_order_relaxed);
      }
    } catch (const Abort&) {
      running.fetch_sub(1);
    } catch (...) {
      running.fetch_sub(1);
      g_abort.store(true);
      std::lock_guard<std::mutex> lock(mu);
      if (!first) first = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (int w = 0; w < live; ++w) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
  g_abort.store(false);
  if (first) std::rethrow_exception(first);
}

}  // namespace simt

// ---- WMMA fragment mappings (mma.h).
namespace simt {
int g_map[3][32][8];
int g_inv[3][256];
namespace {
void invert() {
  for (int kind = 0; kind < 3; ++kind)
    for (int l = 0; l < 32; ++l)
      for (int e = 0; e < 8; ++e) g_inv[kind][g_map[kind][l][e]] = l * 8 + e;
}

void hardware_mapping() {
  // sm_80's mma.m16n8k16 register layout, two n8 halves side by side: lane = 4 * group + t.
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int e = 0; e < 8; ++e) {
      const int lo = e & 1, hi8 = (e >> 1) & 1, half = e >> 2;
      // matrix_a / accumulator: (row, col) = (g + 8*hi8, 2t + lo + 8*half)
      g_map[0][lane][e] = g_map[2][lane][e] = (g + 8 * hi8) * 16 + 2 * t + lo + 8 * half;
      // matrix_b: (k, col) = (2t + lo + 8*hi8, g + 8*half)
      g_map[1][lane][e] = (2 * t + lo + 8 * hi8) * 16 + g + 8 * half;
    }
  }
}
const bool g_map_init = (hardware_mapping(), invert(), true);
}  // namespace

void set_mapping(Mapping mapping, uint64_t seed) {
  hardware_mapping();
  if (mapping == Mapping::hardware) return invert();
  uint64_t s = seed ^ 0x5eedf00dull;
  for (int kind = 0; kind < 3; ++kind) {
    int perm[256];
    for (int i = 0; i < 256; ++i) perm[i] = i;
    for (int i = 255; i > 0; --i) std::swap(perm[i], perm[next_rand(s) % (i + 1)]);
    for (int i = 0; i < 256; ++i) g_map[kind][i / 8][i % 8] = perm[i];
  }
  invert();
}
}  // namespace simt

#if SIMT_METRICS
// ---- The instrumentation's hooks (simt_metrics.h): not instrumented themselves.
namespace simt {
namespace {
__attribute__((no_sanitize_address)) inline void record(uintptr_t addr, uint32_t size, uint32_t store, void* ret) {
  // Builtins only: a call into a library function (std::atomic::load is one at -O1) is
  // instrumented and would re-enter the hook.
  Fiber* f = __atomic_load_n(reinterpret_cast<Fiber* const*>(&tl_fiber), __ATOMIC_RELAXED);
  if (f == nullptr) return;
  const uintptr_t st = reinterpret_cast<uintptr_t>(f->stack);
  if (addr >= st && addr < st + f->stack_size) return;  // locals: registers on a GPU
  const uintptr_t fo = reinterpret_cast<uintptr_t>(f);
  if (addr >= fo && addr < fo + sizeof(Fiber)) return;  // threadIdx, blockIdx, the layer's bookkeeping
  const Block* b = f->block;
  const uint32_t shared = (addr >= b->shared_lo && addr < b->shared_hi) ? 2u : 0u;
  AccessLog& log = f->log;
  if (log.n == log.cap) {
    const size_t cap = log.cap ? 2 * log.cap : 4096;
    void* p = std::realloc(log.a, cap * sizeof(Access));
    if (p == nullptr) std::abort();
    log.a = static_cast<Access*>(p);
    log.cap = cap;
  }
  log.a[log.n++] = Access{reinterpret_cast<uintptr_t>(ret), addr, size, store | shared};
}
__attribute__((no_sanitize_address)) inline void record_n(uintptr_t addr, size_t size, uint32_t store, void* ret) {
  for (size_t off = 0; off < size; off += 16)  // as the widest (16-byte) accesses a GPU would issue
    record(addr + off, static_cast<uint32_t>(size - off < 16 ? size - off : 16), store, ret);
}
}  // namespace
}  // namespace simt

#define SIMT_HOOK(n)                                                                                        \
  extern "C" __attribute__((no_sanitize_address, visibility("default"))) void __asan_load##n##_noabort(    \
      uintptr_t a) {                                                                                        \
    simt::record(a, n, 0, __builtin_return_address(0));                                                     \
  }                                                                                                         \
  extern "C" __attribute__((no_sanitize_address, visibility("default"))) void __asan_store##n##_noabort(   \
      uintptr_t a) {                                                                                        \
    simt::record(a, n, 1, __builtin_return_address(0));                                                     \
  }
SIMT_HOOK(1)
SIMT_HOOK(2)
SIMT_HOOK(4)
SIMT_HOOK(8)
SIMT_HOOK(16)
#undef SIMT_HOOK
// The rest of what the instrumentation calls: nothing to do without ASan's runtime.
extern "C" __attribute__((no_sanitize_address, visibility("default"))) void __asan_handle_no_return() {}
extern "C" __attribute__((no_sanitize_address, visibility("default"))) void __asan_before_dynamic_init(const char*) {}
extern "C" __attribute__((no_sanitize_address, visibility("default"))) void __asan_after_dynamic_init() {}
extern "C" __attribute__((no_sanitize_address, visibility("default"))) void __asan_loadN_noabort(uintptr_t a,
                                                                                                 size_t n) {
  simt::record_n(a, n, 0, __builtin_return_address(0));
}
extern "C" __attribute__((no_sanitize_address, visibility("default"))) void __asan_storeN_noabort(uintptr_t a,
                                                                                                  size_t n) {
  simt::record_n(a, n, 1, __builtin_return_address(0));
}
#endif
