// kernels/conv_block.cu run on the CPU, for tests on machines without a GPU: the kernel's own
// source, compiled by the host compiler, with every CUDA thread of a CTA a std::thread.
// __syncthreads is a barrier of the CTA's threads, __shfl_xor_sync an exchange through a slot
// per lane between two barriers of the warp, __shared__ memory a static (one CTA runs at a
// time), and the CTAs of the grid run one after another (so the last CTA to arrive at a split
// region is the last of its CTAs in grid order).
//
// The chain kernel runs on a grid of one CTA, which takes every tile of every block (its grid
// barrier opens at once), or, for a chain of one block (no barrier), on the grid it is given.
// L2 prefetches are recorded and checked to be lines of the weights. The weight ring's cp.async
// copies land at once or only at the wait the kernel relies on, drawn per group (a read before
// that wait sees the poison the dynamic shared memory is filled with for every CTA; a copy
// issued too early overwrites what other threads still read), and their sources are checked to
// be 16-byte pieces of the weights; so do the chain's 4-byte copies of its parameters, checked
// to read every int of every entry after the first two exactly once per CTA.
//
// What it checks: the indexing, tiling, reductions, split partials and the epilogue's
// arithmetic, and that every thread reaches every barrier (a launch that does not finish within
// kWatchdogSeconds fails with an error naming that). What it cannot: timing, memory ordering
// between concurrent CTAs (the two protocols between CTAs, the chain's grid barrier and the
// split finish's arrival, are run alone by concurrent threads: grid_barrier_check and
// region_arrival_check), and the GPU's math functions (the host's exp and sqrt stand in).
//
// Built by tests/emulation/load.py (torch.utils.cpp_extension.load, once per test session) for
// the backend "cuda-emulated" of tests/test_conv_block.py and the network and chain tests in
// tests/test_fast_backends.py; exposes conv_block_params and conv_block_chain with the
// operators' signatures and `launch` (one block from conv_block_params' bytes: load.py composes
// the two into conv_block), on CPU tensors. tests/emulation/racecheck.py builds it under
// ThreadSanitizer, which then reports the accesses of two threads to one address (one a write)
// that nothing above orders: the kernel's data races within a CTA, and those of the grid
// barrier and the split finish's arrival between CTAs.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cstring>
#include <deque>

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda/atomic>
#include <torch/extension.h>

#include "kernels/conv_block.cuh"  // the constants the emulation sizes its shared memory by

namespace dp_fast_emulation {

class Barrier {  // every participant waits until all `count` have arrived (futex-based)
 public:
  explicit Barrier(int count) : barrier_(count) {}
  void wait() { barrier_.arrive_and_wait(); }

 private:
  std::barrier<> barrier_;
};

constexpr int kMaxThreads = 1024;
constexpr int kWatchdogSeconds = 60;  // a test launch takes well under a second
// Counts detached threads out: each calls done(), the caller wait(), which gives up after
// kWatchdogSeconds (the threads, then blocked for good, keep what they share alive through the
// caller's shared_ptr).
class Completion {
 public:
  explicit Completion(int64_t count) : count_(count) {}
  void done() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (++finished_ == count_) finished_cv_.notify_all();
  }
  bool wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    return finished_cv_.wait_for(lock, std::chrono::seconds(kWatchdogSeconds), [&] { return finished_ == count_; });
  }

 private:
  const int64_t count_;
  int64_t finished_ = 0;
  std::mutex mutex_;
  std::condition_variable finished_cv_;
};

thread_local uint3 thread_idx;
thread_local uint3 block_idx;
thread_local dim3 grid_dim;
Barrier* cta_barrier = nullptr;
std::vector<Barrier*> warp_barriers;
double lane_slots[kMaxThreads];  // float and double values round-trip exactly

// A CTA of one thread (grid_barrier_check: a std::thread per CTA) has nothing to wait for.
thread_local bool one_thread_cta = false;
inline void sync_cta() {
  if (!one_thread_cta) cta_barrier->wait();
}

template <typename T>
T shfl_xor(unsigned /*mask: all lanes take part*/, T value, int lane_mask) {
  const int t = thread_idx.x, base = t & ~31;
  lane_slots[t] = static_cast<double>(value);
  warp_barriers[t >> 5]->wait();
  const T other = static_cast<T>(lane_slots[base + ((t & 31) ^ lane_mask)]);
  warp_barriers[t >> 5]->wait();
  return other;
}

// The launch's L2 prefetch requests (addresses); checked against the weights after it. And its
// L1 requests (a staged chain entry's), checked against the tensors the entry reads, and the
// sources of its cp.async copies, checked against the weights.
std::mutex prefetch_mutex;
std::vector<uintptr_t> prefetches;
std::vector<uintptr_t> l1_prefetches;
std::vector<uintptr_t> copy_sources;
std::vector<uintptr_t> param_copy_sources;  // the chain's 4-byte copies of its parameters

// cp.async: a thread's copies in its open group, and its committed groups, oldest first. A group
// lands (is copied) at once or, as late as the hardware may, when the thread's wait lets no more
// than N stay pending: which, drawn per group (the draws seeded per CTA thread, so a launch is
// reproducible). Landing late shows a read before the wait it needs; landing at once, a copy
// issued into a buffer other threads still read. A copy to a misaligned or outside address, or
// groups left at the end of a CTA, are counted as misuse.
struct Copy {
  void* dst;
  const void* src;
  size_t bytes;
};
thread_local std::vector<Copy> open_copies;
thread_local std::deque<std::vector<Copy>> pending_copies;
thread_local std::minstd_rand landing;
thread_local int open_lands_at_once = -1;  // the open group's draw; -1: no group open
std::atomic<int64_t> copy_misuse{0};
std::atomic<int64_t> flag_misses{0};  // flagged values polled before (or without) their write
alignas(16) unsigned char dynamic_smem_bytes[dp_fast::kConvRingBytes];

// The chain probe's clocks (kernels/conv_block.cu: probe_globaltimer, probe_clock): a steady
// clock's nanoseconds.
inline long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace dp_fast_emulation

// What the kernel's source leaves to its target (kernels/conv_block.cu): one CTA runs at a time,
// so a launch has nothing to overlap; the L2 prefetch is recorded.
namespace dp_fast {
inline void allow_dependent_launch() {}
inline void wait_for_previous_launch() {}
inline void grid_barrier_backoff() { std::this_thread::yield(); }
// A flagged value not there when its reader polls: in a launch (one CTA at a time) it never will
// be, so the miss is recorded (the launch then fails) and the reader goes on; between the
// concurrent threads of flag_exchange_check, it polls again.
inline bool flag_poll_again() {
  if (dp_fast_emulation::one_thread_cta) {
    std::this_thread::yield();
    return true;
  }
  ++dp_fast_emulation::flag_misses;
  return false;
}
inline void prefetch_l2(const void* address) {
  std::lock_guard<std::mutex> lock(dp_fast_emulation::prefetch_mutex);
  dp_fast_emulation::prefetches.push_back(reinterpret_cast<uintptr_t>(address));
}
inline void prefetch_l1(const void* address) {
  std::lock_guard<std::mutex> lock(dp_fast_emulation::prefetch_mutex);
  dp_fast_emulation::l1_prefetches.push_back(reinterpret_cast<uintptr_t>(address));
}
inline unsigned char* dynamic_smem() { return dp_fast_emulation::dynamic_smem_bytes; }
inline void copy_async(void* smem, const void* global, size_t bytes) {  // lands now or at a wait (drawn per group)
  using namespace dp_fast_emulation;
  if (open_lands_at_once < 0) open_lands_at_once = static_cast<int>(landing() & 1u);
  if (open_lands_at_once) {
    std::memcpy(smem, global, bytes);
  } else {
    open_copies.push_back({smem, global, bytes});
  }
}
inline void copy_async_16(void* smem, const void* global) {
  using namespace dp_fast_emulation;
  const auto at = reinterpret_cast<uintptr_t>(smem), base = reinterpret_cast<uintptr_t>(dynamic_smem_bytes);
  if (at % 16 != 0 || reinterpret_cast<uintptr_t>(global) % 16 != 0 || at < base || at + 16 > base + sizeof dynamic_smem_bytes) {
    ++copy_misuse;
    return;
  }
  {
    std::lock_guard<std::mutex> lock(prefetch_mutex);
    copy_sources.push_back(reinterpret_cast<uintptr_t>(global));
  }
  copy_async(smem, global, 16);
}
inline void copy_async_4(void* smem, const void* global) {
  using namespace dp_fast_emulation;
  if (reinterpret_cast<uintptr_t>(smem) % 4 != 0 || reinterpret_cast<uintptr_t>(global) % 4 != 0) {
    ++copy_misuse;
    return;
  }
  {
    std::lock_guard<std::mutex> lock(prefetch_mutex);
    param_copy_sources.push_back(reinterpret_cast<uintptr_t>(global));
  }
  copy_async(smem, global, 4);
}
inline void copy_async_commit() {
  dp_fast_emulation::pending_copies.push_back(std::move(dp_fast_emulation::open_copies));
  dp_fast_emulation::open_copies.clear();
  dp_fast_emulation::open_lands_at_once = -1;
}
template <int N>
void copy_async_wait() {
  auto& pending = dp_fast_emulation::pending_copies;
  while (pending.size() > static_cast<size_t>(N)) {
    for (const auto& c : pending.front()) std::memcpy(c.dst, c.src, c.bytes);
    pending.pop_front();
  }
}
}  // namespace dp_fast

// The CUDA dialect, for the host compiler (after the CUDA headers, which define some of these).
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __forceinline__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
#define threadIdx (::dp_fast_emulation::thread_idx)
#define blockIdx (::dp_fast_emulation::block_idx)
#define gridDim (::dp_fast_emulation::grid_dim)
#define __syncthreads() ::dp_fast_emulation::sync_cta()
#define __shfl_xor_sync(mask, value, lane_mask) ::dp_fast_emulation::shfl_xor(mask, value, lane_mask)
#define __ldcg(pointer) (*(pointer))
#define DP_FAST_CPU_EMULATION 1

namespace dp_fast {
using std::exp;
using std::max;
using std::min;
using std::sqrt;
}  // namespace dp_fast

#include "kernels/conv_block.cu"
#include "csrc/conv_block_params.h"

namespace {

// Runs `cta` (one CTA's work: the kernel called with its arguments) for every CTA of `grid`, a
// std::thread per CUDA thread for the whole launch; the CTAs run in grid order, each started only
// once every thread has finished the one before (they share the statics). The threads are
// detached and share `launch` with this call: a kernel whose threads do not all reach a barrier
// (a __syncthreads or warp shuffle under divergent control flow) leaves them blocked, and the
// call fails after kWatchdogSeconds instead of hanging the tests. `what` names the launch.
template <typename Cta>
void run_grid(dim3 grid, Cta cta, const std::string& what) {
  using namespace dp_fast_emulation;
  const int threads = dp_fast::kThreads;
  struct Launch {
    explicit Launch(int n) : cta(n), completion(n) {
      for (int w = 0; w < n / 32; ++w) warps.push_back(std::make_unique<Barrier>(32));
    }
    Barrier cta;
    std::vector<std::unique_ptr<Barrier>> warps;
    Completion completion;
  };
  prefetches.clear();
  l1_prefetches.clear();
  copy_sources.clear();
  param_copy_sources.clear();
  copy_misuse = 0;
  flag_misses = 0;
  auto launch = std::make_shared<Launch>(threads);
  cta_barrier = &launch->cta;
  warp_barriers.clear();
  for (auto& w : launch->warps) warp_barriers.push_back(w.get());
  for (int t = 0; t < threads; ++t) {
    std::thread([launch, grid, cta, t, threads] {
      thread_idx = make_uint3(t, 0, 0);
      grid_dim = grid;
      for (unsigned z = 0; z < grid.z; ++z) {
        for (unsigned y = 0; y < grid.y; ++y) {
          for (unsigned xb = 0; xb < grid.x; ++xb) {
            block_idx = make_uint3(xb, y, z);
            if (t == 0) std::memset(dynamic_smem_bytes, 0xff, sizeof dynamic_smem_bytes);  // NaN in every dtype
            landing.seed(1u + t + 1024u * (xb + 65536u * (y + 64u * z)));
            open_lands_at_once = -1;
            launch->cta.wait();
            cta();
            if (!open_copies.empty() || !pending_copies.empty()) {  // copies the CTA never waited for
              ++copy_misuse;
              open_copies.clear();
              pending_copies.clear();
            }
            launch->cta.wait();
          }
        }
      }
      launch->completion.done();
    }).detach();
  }
  TORCH_CHECK(launch->completion.wait(), what, " (emulated): the launch did not finish in ", kWatchdogSeconds,
              " s: a __syncthreads or __shfl_xor_sync that not every thread reaches?");
  TORCH_CHECK(copy_misuse == 0, what, " (emulated): ", copy_misuse.load(),
              " cp.async copies to a misaligned or outside shared address, from a misaligned one, or never waited for");
  TORCH_CHECK(flag_misses == 0, what, " (emulated): ", flag_misses.load(),
              " flagged values read before their writer stored them with this launch's flag (a wrong link or slot)");
}

// Every cp.async copy reads 16 bytes inside one of the weight tensors [lo, hi).
void check_copies(const std::vector<std::pair<uintptr_t, uintptr_t>>& weights, const std::string& what) {
  for (const uintptr_t at : dp_fast_emulation::copy_sources) {
    bool inside = false;
    for (const auto& [lo, hi] : weights) inside = inside || (at >= lo && at + 16 <= hi);
    TORCH_CHECK(inside, what, " (emulated): a cp.async copy from address ", at, " reads outside the weights");
  }
}

// The chain's parameters copied by cp.async (entries 2 and after; the first two are loaded):
// each CTA copies each int of each of them once, from the chain's parameters.
void check_param_copies(const dp_fast::ConvBlockParams* blocks, int count, unsigned ctas) {
  constexpr int kInts = sizeof(dp_fast::ConvBlockParams) / sizeof(int);
  const auto lo = reinterpret_cast<uintptr_t>(blocks + std::min(count, 2)), hi = reinterpret_cast<uintptr_t>(blocks + count);
  std::vector<int> copies(static_cast<size_t>(std::max(count - 2, 0)) * kInts, 0);
  for (const uintptr_t at : dp_fast_emulation::param_copy_sources) {
    TORCH_CHECK(at >= lo && at + 4 <= hi && (at - lo) % 4 == 0, "conv_block_chain (emulated): a cp.async copy from address ",
                at, " reads outside the parameters of the chain's entries 2 to ", count - 1);
    ++copies[(at - lo) / 4];
  }
  for (size_t j = 0; j < copies.size(); ++j) {
    TORCH_CHECK(copies[j] == static_cast<int>(ctas), "conv_block_chain (emulated): int ", j % kInts, " of entry ",
                2 + j / kInts, "'s parameters copied ", copies[j], " times on ", ctas, " CTAs");
  }
}

// Every prefetch asks for a whole line that holds bytes of one of the weight tensors [lo, hi)
// (a line outside them might not be mapped on the GPU).
void check_prefetches(const std::vector<std::pair<uintptr_t, uintptr_t>>& weights, const std::string& what) {
  constexpr uintptr_t kLine = dp_fast::kConvPrefetchLineBytes;
  for (const uintptr_t at : dp_fast_emulation::prefetches) {
    bool inside = false;
    for (const auto& [lo, hi] : weights) inside = inside || (at + kLine > lo && at < hi);
    TORCH_CHECK(at % kLine == 0 && inside, what, " (emulated): an L2 prefetch at address ", at,
                " is not a line of the weights (", weights.front().first, " + ", weights.front().second - weights.front().first,
                " bytes, ...)");
  }
}

std::pair<uintptr_t, uintptr_t> span_of(const void* w, int64_t elements, int wdtype) {
  const int64_t size = dp_fast::kConvElementBytes(wdtype);
  return {reinterpret_cast<uintptr_t>(w), reinterpret_cast<uintptr_t>(w) + elements * size};
}

// A block's convolution weights.
std::pair<uintptr_t, uintptr_t> weights_of(const dp_fast::ConvBlockParams& p) {
  return span_of(p.w, static_cast<int64_t>(p.c_out) * p.c_in * p.k, p.wdtype);
}

// The convolution weights of blocks[0, count) and, with `residual`, their 1x1 residual weights.
std::vector<std::pair<uintptr_t, uintptr_t>> weight_spans(const dp_fast::ConvBlockParams* blocks, int count, bool residual) {
  std::vector<std::pair<uintptr_t, uintptr_t>> spans;
  for (int i = 0; i < count; ++i) {
    const dp_fast::ConvBlockParams& p = blocks[i];
    spans.push_back(weights_of(p));
    if (residual && p.rw != nullptr) spans.push_back(span_of(p.rw, static_cast<int64_t>(p.c_out) * p.cr, p.wdtype));
  }
  return spans;
}

// The elements a (B, C, T) operand spans (0 when absent), for strides >= 0.
int64_t operand_elements(const dp_fast::Operand& a, int64_t batch, int64_t channels, int64_t length) {
  return a.ptr == nullptr ? 0 : (batch - 1) * a.sb + (channels - 1) * a.sc + (length - 1) * a.st + 1;
}

// Every L1 request is an address inside a tensor one of the entries reads besides its input
// (weights, bias, GroupNorm affine, 1x1 residual bias, conditions, identity residual, the
// step's sample and noise), not necessarily line-aligned.
void check_l1_prefetches(const dp_fast::ConvBlockParams* blocks, int count, const std::string& what) {
  for (const uintptr_t at : dp_fast_emulation::l1_prefetches) {
    bool inside = false;
    for (int i = 0; i < count && !inside; ++i) {
      const dp_fast::ConvBlockParams& p = blocks[i];
      const std::pair<uintptr_t, uintptr_t> spans[] = {
          weights_of(p), span_of(p.bias, p.c_out, p.wdtype),
          span_of(p.gn_w, p.gn_w ? p.c_out : 0, p.wdtype), span_of(p.gn_b, p.gn_b ? p.c_out : 0, p.wdtype),
          span_of(p.rb, p.rb ? p.c_out : 0, p.wdtype),
          span_of(p.cond.ptr, p.cond.ptr ? (p.batch - 1) * p.cond.sb + p.c_out : 0, p.cond.dtype),
          span_of(p.scale.ptr, p.scale.ptr ? (p.batch - 1) * p.scale.sb + p.c_out : 0, p.scale.dtype),
          span_of(p.res.ptr, p.rw == nullptr ? operand_elements(p.res, p.batch, p.c_out, p.t_out) : 0, p.res.dtype),
          span_of(p.sample.ptr, operand_elements(p.sample, p.batch, p.c_out, p.t_out), p.sample.dtype),
          span_of(p.noise.ptr, operand_elements(p.noise, p.batch, p.c_out, p.t_out), p.noise.dtype)};
      for (const auto& [lo, hi] : spans) inside = inside || (at >= lo && at < hi);
    }
    TORCH_CHECK(inside, what, " (emulated): an L1 prefetch at address ", at, " is not inside a tensor the blocks read");
  }
}

// One launch of the single-block kernel from its parameter bytes (conv_block_params_emulated's;
// the Python side composes the two into the operator, tests/emulation/load.py).
void launch_emulated(const at::Tensor& params) {
  TORCH_CHECK(params.device().is_cpu() && params.scalar_type() == at::kByte &&
                  params.numel() == static_cast<int64_t>(sizeof(dp_fast::ConvBlockParams)),
              "conv_block (emulated): params must be one entry of conv_block_params");
  dp_fast::ConvBlockParams p;
  std::memcpy(&p, params.data_ptr(), sizeof p);
  const auto kernel = dp_fast::conv_block_kernel_for(p);
  TORCH_CHECK(kernel != nullptr, "conv_block: launch failed: invalid plan (nc ", p.nc, ", region ", p.region, ")");
  run_grid(dim3(p.co_tiles, p.n_tiles, p.split), [p, kernel] { kernel(p); }, "conv_block");
  check_prefetches(weight_spans(&p, 1, false), "conv_block");
  check_copies(weight_spans(&p, 1, true), "conv_block");
  check_l1_prefetches(&p, 1, "conv_block");
}

at::Tensor conv_block_params_emulated(const at::Tensor& x, const std::optional<at::Tensor>& x2, const at::Tensor& weight,
                                      const at::Tensor& bias, const std::optional<at::Tensor>& gn_weight,
                                      const std::optional<at::Tensor>& gn_bias, const std::optional<at::Tensor>& cond,
                                      const std::optional<at::Tensor>& cond_scale, const std::optional<at::Tensor>& residual,
                                      const std::optional<at::Tensor>& res_x2, const std::optional<at::Tensor>& res_weight,
                                      const std::optional<at::Tensor>& res_bias, const std::optional<at::Tensor>& sample,
                                      const std::optional<at::Tensor>& noise, const std::optional<at::Tensor>& coefs,
                                      const at::Tensor& out, const at::Tensor& parts, const at::Tensor& counters,
                                      std::vector<int64_t> config, std::vector<double> scalars,
                                      const std::optional<at::Tensor>& head_weight,
                                      const std::optional<at::Tensor>& head_bias) {
  TORCH_CHECK(weight.device().is_cpu(), "conv_block_params (emulated): tensors must be on the CPU");
  return dp_fast::conv_block_params_bytes(dp_fast::make_conv_block_params(
      x, x2, weight, bias, gn_weight, gn_bias, cond, cond_scale, residual, res_x2, res_weight, res_bias, sample, noise,
      coefs, out, parts, counters, config, scalars, head_weight, head_bias));
}

int last_chain_barrier_free = 0;  // whether the last chain ran without grid barriers (its check's verdict)

// The chain kernel on a grid of one CTA, which takes every tile of every block (the grid
// barrier opens at once): its walk over the entries, tiles and shared memory; not the barrier
// between CTAs (that needs a GPU). A chain of one entry has no barrier: it runs on `grid` CTAs
// one after another, so the spread of tiles over the CTAs is checked too.
void conv_block_chain_emulated(const at::Tensor& params, const at::Tensor& device_params, const at::Tensor& barrier,
                               int64_t grid, const std::optional<at::Tensor>& flags,
                               const std::optional<at::Tensor>& probe) {
  const dp_fast::ChainCheck chain = dp_fast::check_conv_block_chain(params, device_params, barrier, grid, flags, probe);
  TORCH_CHECK(device_params.device().is_cpu() && barrier.device().is_cpu(),
              "conv_block_chain (emulated): tensors must be on the CPU");
  const dp_fast::ChainFlags chain_flags = chain.flags;
  last_chain_barrier_free = chain_flags.barrier_free;
  const auto* blocks = static_cast<const dp_fast::ConvBlockParams*>(device_params.data_ptr());
  const auto kernel = dp_fast::conv_block_chain_kernel_for(chain.wdtype);
  auto* words = static_cast<unsigned*>(barrier.data_ptr());
  const int count = chain.count;
  const unsigned ctas = count == 1 ? static_cast<unsigned>(grid) : 1u;
  long long* const probe_rows = chain.probe;
  run_grid(dim3(ctas), [blocks, count, words, kernel, chain_flags, probe_rows] { kernel(blocks, count, words, chain_flags, probe_rows); },
           "conv_block_chain");
  check_prefetches(weight_spans(blocks, count, false), "conv_block_chain");
  check_copies(weight_spans(blocks, count, true), "conv_block_chain");
  check_l1_prefetches(blocks, count, "conv_block_chain");
  check_param_copies(blocks, count, ctas);
}

// Runs cta(c) for c in [0, ctas) at once, each on a std::thread that is a CTA of one thread
// (block c of a grid of `ctas`); `run` (the state they share) outlives a call that times out,
// which fails naming `what`.
template <typename Run, typename Cta>
void run_concurrent_ctas(int64_t ctas, const std::shared_ptr<Run>& run, Cta cta, const char* what) {
  for (int64_t c = 0; c < ctas; ++c) {
    std::thread([run, c, ctas, cta] {
      dp_fast_emulation::one_thread_cta = true;
      dp_fast_emulation::thread_idx = make_uint3(0, 0, 0);
      dp_fast_emulation::block_idx = make_uint3(static_cast<unsigned>(c), 0, 0);
      dp_fast_emulation::grid_dim = dim3(static_cast<unsigned>(ctas));
      cta(*run, c);
      run->completion.done();
    }).detach();
  }
  TORCH_CHECK(run->completion.wait(), what, ": the CTAs did not all finish in ", dp_fast_emulation::kWatchdogSeconds,
              " s (a barrier that never opens?)");
}

// The chain kernel's grid barrier (GridBarrier, kernels/conv_block.cu) between CTAs that run at
// once, which the kernel's emulation cannot show (its CTAs run one after another): `ctas`
// std::threads, each a CTA of one thread (thread 0: the one that arrives and waits), pass
// `rounds` barriers on one word that starts at `start`; before each, a CTA writes the round into
// its slot, after it every CTA reads every slot. The slots are plain ints, as the chain's
// activations are (two sets, by the round's parity: a slot is written again only two barriers
// after it was read), so that only the barrier orders a write before the reads after it (under
// ThreadSanitizer, tests/emulation/racecheck.py, a barrier that does not is a reported race).
// Returns the number of slots read behind their round (0: every write before a barrier was
// seen after it) and the word's final value (start + rounds * 2^31, mod 2^32: nothing to reset).
std::vector<int64_t> grid_barrier_check(int64_t ctas, int64_t rounds, int64_t start) {
  TORCH_CHECK(ctas >= 1 && ctas <= 512 && rounds >= 1, "grid_barrier_check: 1..512 CTAs, at least one round");
  struct Run {  // shared with the threads, which outlive a call that times out (left blocked)
    unsigned word = 0;
    std::vector<int> slots[2];
    std::atomic<int64_t> stale{0};
    dp_fast_emulation::Completion completion;
    explicit Run(int64_t n) : slots{std::vector<int>(n), std::vector<int>(n)}, completion(n) {}
  };
  auto run = std::make_shared<Run>(ctas);
  run->word = static_cast<unsigned>(start);
  run_concurrent_ctas(ctas, run, [rounds](Run& run, int64_t c) {
    dp_fast::GridBarrier barrier(&run.word);
    for (int r = 1; r <= rounds; ++r) {
      std::vector<int>& slots = run.slots[r % 2];
      slots[c] = r;
      barrier.arrive();
      barrier.wait();
      int64_t behind = 0;
      for (const int slot : slots) behind += slot < r;
      run.stale += behind;
    }
  }, "grid_barrier_check");
  return {run->stale.load(), static_cast<int64_t>(run->word)};
}

// The split finish's arrival (arrive_at_region, kernels/conv_block.cu) between CTAs that run at
// once, as grid_barrier_check does for the grid barrier: `ctas` std::threads, each a CTA of one
// thread, `rounds` times write their partial (a plain int) and arrive at one counter; the CTA
// that arrives last reads every partial. A barrier of the threads between rounds stands for the
// end of a launch. Returns the number of partials the last CTAs read behind their round (0: the
// arrival orders them), how many CTAs arrived last (one a round) and the counter's final value
// (0: reset for the next launch).
std::vector<int64_t> region_arrival_check(int64_t ctas, int64_t rounds) {
  TORCH_CHECK(ctas >= 1 && ctas <= 512 && rounds >= 1, "region_arrival_check: 1..512 CTAs, at least one round");
  struct Run {  // shared with the threads, which outlive a call that times out (left blocked)
    int counter = 0;
    std::vector<int> partials;
    std::atomic<int64_t> stale{0}, lasts{0};
    dp_fast_emulation::Barrier launch_end;
    dp_fast_emulation::Completion completion;
    explicit Run(int64_t n) : partials(n), launch_end(static_cast<int>(n)), completion(n) {}
  };
  auto run = std::make_shared<Run>(ctas);
  run_concurrent_ctas(ctas, run, [ctas, rounds](Run& run, int64_t c) {
    for (int r = 1; r <= rounds; ++r) {
      run.partials[c] = r;
      int last = 0;  // the CTA's shared flag
      if (dp_fast::arrive_at_region(run.counter, static_cast<int>(ctas), last)) {
        ++run.lasts;
        int64_t behind = 0;
        for (const int partial : run.partials) behind += partial != r;
        run.stale += behind;
      }
      run.launch_end.wait();
    }
  }, "region_arrival_check");
  return {run->stale.load(), run->lasts.load(), static_cast<int64_t>(run->counter)};
}

// The chain's flagged exchange (store_flagged, load_flagged; kernels/conv_block.cuh, ChainFlags)
// between CTAs that run at once, with no barrier, as in a barrier-free chain: `ctas` std::threads,
// each a CTA of one thread, in round r (flag r + 1) store their value c + ctas r flagged into
// their word of one of two slots (by the round's parity: a word is written again two rounds
// later, which the reads of the round between order after every read of it, as consecutive
// staged entries are ordered), then poll every word of the round's slot until it carries the
// round's flag and check its value. Returns the number of values read wrong (0), and whether
// every thread finished (a reader that saw a later round's flag would poll for ever: the check
// then fails by its watchdog).
int64_t flag_exchange_check(int64_t ctas, int64_t rounds) {
  TORCH_CHECK(ctas >= 1 && ctas <= 512 && rounds >= 1, "flag_exchange_check: 1..512 CTAs, at least one round");
  struct Run {  // shared with the threads, which outlive a call that times out (left blocked)
    std::vector<unsigned long long> slots[2];
    std::atomic<int64_t> wrong{0};
    dp_fast_emulation::Completion completion;
    explicit Run(int64_t n)
        : slots{std::vector<unsigned long long>(n), std::vector<unsigned long long>(n)}, completion(n) {}
  };
  auto run = std::make_shared<Run>(ctas);
  run_concurrent_ctas(ctas, run, [ctas, rounds](Run& run, int64_t c) {
    for (int64_t r = 0; r < rounds; ++r) {
      const unsigned flag = static_cast<unsigned>(r) + 1u;
      std::vector<unsigned long long>& slot = run.slots[r % 2];
      dp_fast::store_flagged<float>(slot.data(), c, dp_fast::kF32, static_cast<float>(c + ctas * r), flag);
      for (int64_t d = 0; d < ctas; ++d) {
        float value = 0;
        while (!dp_fast::load_flagged<float>(slot.data() + d, flag, value)) dp_fast::flag_poll_again();
        run.wrong += value != static_cast<float>(d + ctas * r);
      }
    }
  }, "flag_exchange_check");
  return run->wrong.load();
}

// The addresses the last launch prefetched, in request order.
std::vector<int64_t> last_prefetches() {
  std::lock_guard<std::mutex> lock(dp_fast_emulation::prefetch_mutex);
  return {dp_fast_emulation::prefetches.begin(), dp_fast_emulation::prefetches.end()};
}

// The source addresses of the last launch's cp.async copies (16 bytes each), in no set order.
std::vector<int64_t> last_copies() {
  std::lock_guard<std::mutex> lock(dp_fast_emulation::prefetch_mutex);
  return {dp_fast_emulation::copy_sources.begin(), dp_fast_emulation::copy_sources.end()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("launch", &launch_emulated, "kernels/conv_block.cu's single-block kernel emulated on the CPU, from conv_block_params' bytes");
  m.def("last_prefetches", &last_prefetches, "the addresses the last launch asked L2 to prefetch");
  m.def("last_copies", &last_copies, "the source addresses of the last launch's cp.async copies (16 bytes each)");
  m.def("conv_block_params", &conv_block_params_emulated, "torch.ops.dp_fast.conv_block_params for CPU tensors",
        pybind11::arg("x"), pybind11::arg("x2"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("gn_weight"),
        pybind11::arg("gn_bias"), pybind11::arg("cond"), pybind11::arg("cond_scale"), pybind11::arg("residual"),
        pybind11::arg("res_x2"), pybind11::arg("res_weight"), pybind11::arg("res_bias"), pybind11::arg("sample"),
        pybind11::arg("noise"), pybind11::arg("coefs"), pybind11::arg("out"), pybind11::arg("parts"),
        pybind11::arg("counters"), pybind11::arg("config"), pybind11::arg("scalars"),
        pybind11::arg("head_weight") = pybind11::none(), pybind11::arg("head_bias") = pybind11::none());
  m.def("conv_block_chain", &conv_block_chain_emulated, "kernels/conv_block.cu's chain kernel on a grid of one CTA",
        pybind11::arg("params"), pybind11::arg("device_params"), pybind11::arg("barrier"), pybind11::arg("grid"),
        pybind11::arg("flags") = pybind11::none(), pybind11::arg("probe") = pybind11::none());
  m.def("last_chain_barrier_free", [] { return last_chain_barrier_free != 0; },
        "whether the last chain launch ran without grid barriers (every entry staged and linked)");
  m.def("flag_exchange_check", &flag_exchange_check, "the chain's flagged exchange between CTAs run as concurrent threads");
  m.def("grid_barrier_check", &grid_barrier_check, "the chain's grid barrier between CTAs run as concurrent threads");
  m.def("region_arrival_check", &region_arrival_check, "the split finish's arrival between CTAs run as concurrent threads");
}
