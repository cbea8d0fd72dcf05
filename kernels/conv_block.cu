// The fused conv_block on the GPU (contract and work split: kernels/conv_block.cuh).
//
// A CTA of 256 threads (8 warps) owns kConvRowsPerCta(NC) output channels and NC columns, and
// walks its share of the reduction index r = ci * K + k. With few columns (NC <= 8: the whole
// batch at batch 1 and T <= 8) the GEMV reduction (gemv_reduce): thread tid takes the indices
// r = tid + 256 j, gathers r's NC input values once and streams the weights of all 64 / NC
// rows at r past them, one accumulator per product; a reduce-scatter over the warp and a sum
// over the warps give the tile. Wider tiles use the tiled reduction (reduce), in chunks of kChunk:
//   1. the chunk's input columns (an implicit im2col: cols[r][n] = x[b, ci, src(t, k)], x or the
//      skip x2 by ci, zero outside the sequence) are gathered into shared memory (loaded into
//      registers one chunk ahead, like the weights);
//   2. each warp owns RPW rows; lane l reads the weights w[co, r0 + l + 32 j] (coalesced 128-byte
//      rows per warp; the next chunk's are loaded before this chunk's arithmetic), so every
//      weight is read from memory exactly once per launch;
//   3. acc[row][n] += w * cols[r][n] in registers (cols rows are padded: no bank conflicts);
// then the 32 lanes' partial sums are added with shuffles. In either reduction the weights come
// straight into registers (the next index's or chunk's loaded ahead) or, where the plan sets
// `ring`, through a ring of cp.async stages in shared memory (WeightRing: several chunks of
// 16-byte copies in flight per CTA). A region held by one CTA is finished
// at once; otherwise partials go to `parts` and the last CTA to arrive finishes the region.
// The epilogue (bias, GroupNorm with two-pass statistics per batch element, activation, FiLM,
// residual, scheduler step) runs on a shared-memory tile, one thread per element.
//
// One CTA's tile of one block is conv_block_cta; conv_block_kernel runs one block (a CTA per
// tile, a programmatic dependent launch on sm_90), conv_block_chain_kernel a list of blocks (a
// whole network evaluation) in one cooperative launch: each CTA takes tiles i, i + grid, ... of
// a block, then all meet at a grid-wide barrier before the next block. A staged chain entry
// (staged_block; kernels/conv_block.cuh) copies its input to shared memory and reduces whole
// rows from there, without split partials; with the chain's flagged exchange (ChainFlags) it
// reads that input from the flagged copies earlier entries wrote, and a chain of such entries
// needs no grid barrier.
//
// The same source, compiled by the host compiler, runs the tests on machines without a GPU
// (tests/emulation/conv_block_cpu.cpp: a std::thread per CUDA thread). Keep to what it
// emulates: __syncthreads reached by every thread, __shfl_xor_sync over whole warps, static
// __shared__ arrays, dynamic shared memory through dynamic_smem(), cp.async through the
// copy_async_* helpers, __ldcg, cuda::atomic_ref; the launches themselves stay in
// launch_conv_block_as and launch_conv_block_chain_as.
#include "kernels/conv_block.cuh"

#include <cstring>
#include <cuda/atomic>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/scheduler_step_math.h"

// Where the kernels are instantiated (at the end of this file): every weight dtype in one
// translation unit (the CPU emulation; the tests' sm_90 compile, DP_FAST_CONV_BLOCK_ALL), or one
// dtype per unit (DP_FAST_CONV_BLOCK_WEIGHTS: kernels/conv_block_{f32,bf16,f64}.cu, which the
// build compiles in parallel) while this file, compiled alone, holds only the dispatch to them.
#if defined(DP_FAST_CPU_EMULATION) || defined(DP_FAST_CONV_BLOCK_ALL) || defined(DP_FAST_CONV_BLOCK_WEIGHTS)
#define DP_FAST_CONV_BLOCK_KERNELS 1
#endif
#if defined(DP_FAST_CPU_EMULATION) || defined(DP_FAST_CONV_BLOCK_ALL) || !defined(DP_FAST_CONV_BLOCK_WEIGHTS)
#define DP_FAST_CONV_BLOCK_DISPATCH 1
#endif
#if !defined(DP_FAST_CONV_BLOCK_KERNELS)
#pragma nv_diag_suppress 177  // the dispatch alone: the device code below is parsed, never used
#endif

namespace dp_fast {
namespace {

constexpr int kThreads = kConvThreadsPerCta;
constexpr int kWarps = kThreads / 32;

template <typename W> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ double to_f(double v) { return v; }

// An activation element in any of the three dtypes, converted to the accumulation type.
template <typename A>
__device__ __forceinline__ A load_act(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case kBF16: return static_cast<A>(__bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]));
    case kF64: return static_cast<A>(static_cast<const double*>(p)[i]);
    default: return static_cast<A>(static_cast<const float*>(p)[i]);
  }
}

template <typename A>
__device__ __forceinline__ void store_act(void* p, int dtype, int64_t i, A v) {
  switch (dtype) {
    case kBF16: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16(static_cast<float>(v)); break;
    case kF64: static_cast<double*>(p)[i] = static_cast<double>(v); break;
    default: static_cast<float*>(p)[i] = static_cast<float>(v); break;
  }
}

template <typename A>
__device__ __forceinline__ A mish(A y) {
  // y * tanh(softplus(y)) = y * n / (n + 2), n = e^y (e^y + 2); y itself above 20.
  if (y > A(20)) return y;
  const A e = exp(y);
  const A n = e * (e + A(2));
  return y * n / (n + A(2));
}

template <typename A>
__device__ __forceinline__ A silu(A y) { return y / (A(1) + exp(-y)); }

// Bit casts (registers only; memcpy on the host, which has no intrinsics for them).
__device__ __forceinline__ unsigned bits_of(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  unsigned bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
#endif
}
__device__ __forceinline__ unsigned long long bits_of(double v) {
#if defined(__CUDA_ARCH__)
  return static_cast<unsigned long long>(__double_as_longlong(v));
#else
  unsigned long long bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
#endif
}
__device__ __forceinline__ float float_of(unsigned bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float v;
  memcpy(&v, &bits, sizeof v);
  return v;
#endif
}
__device__ __forceinline__ double double_of(unsigned long long bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double v;
  memcpy(&v, &bits, sizeof v);
  return v;
#endif
}

// bfloat16 values carried unconverted through a pipeline: nvcc converts a bfloat16 to float right
// after the load that brings it, and the warp waits for that load there, before the work its
// round trip was meant to overlap (the sm_90 SASS of the GEMV reduction's next input values and
// the tiled reduction's next columns and weights: load, convert, then the multiply-adds). Carried
// in the float register as its 16 bits, nothing reads the load until carried_widen, placed
// after that work. A float64 accumulator (a test dtype) converts at once.
template <typename A>
__device__ __forceinline__ A carried(float v) { return static_cast<A>(v); }
template <typename A>
__device__ __forceinline__ A carried(double v) { return static_cast<A>(v); }
template <typename A>
__device__ __forceinline__ A carried(__nv_bfloat16 v) {
  if constexpr (sizeof(A) == 4) {
    return float_of(static_cast<__nv_bfloat16_raw>(v).x);
  } else {
    return static_cast<A>(__bfloat162float(v));
  }
}
// The value of what carried<A> made of a T (bfloat16: the bits moved to the top half).
template <typename T, typename A>
__device__ __forceinline__ A carried_widen(A v) {
  if constexpr (sizeof(A) == 4 && sizeof(T) == 2) {
    return float_of(bits_of(v) << 16);
  } else {
    return v;
  }
}

// -- the chain's flagged exchange (kernels/conv_block.cuh, ChainFlags) -----------------------------

__device__ __forceinline__ void store_flagged_word(unsigned long long* at, unsigned bits, unsigned flag) {
  cuda::atomic_ref<unsigned long long, cuda::thread_scope_device>(*at).store(
      static_cast<unsigned long long>(flag) << 32 | bits, cuda::memory_order_relaxed);
}

__device__ __forceinline__ unsigned long long load_flagged_word(const unsigned long long* at) {
  return cuda::atomic_ref<unsigned long long, cuda::thread_scope_device>(*const_cast<unsigned long long*>(at))
      .load(cuda::memory_order_relaxed);
}

// Element `index` of a flagged slot: v rounded to `dtype` as store_act rounds it, each word its
// bits and the flag.
template <typename A>
__device__ __forceinline__ void store_flagged(unsigned long long* slot, int64_t index, int dtype, A v, unsigned flag) {
  switch (dtype) {
    case kBF16: {
      const __nv_bfloat16_raw h = __float2bfloat16(static_cast<float>(v));
      store_flagged_word(slot + index, h.x, flag);
      break;
    }
    case kF64: {
      const unsigned long long bits = bits_of(static_cast<double>(v));
      store_flagged_word(slot + 2 * index, static_cast<unsigned>(bits), flag);
      store_flagged_word(slot + 2 * index + 1, static_cast<unsigned>(bits >> 32), flag);
      break;
    }
    default: store_flagged_word(slot + index, bits_of(static_cast<float>(v)), flag); break;
  }
}

// The value of type T held by flagged words w0 (and w1, a double's high half).
template <typename T>
__device__ __forceinline__ T flagged_value(unsigned long long w0, unsigned long long w1) {
  if constexpr (sizeof(T) == 8) {
    return double_of((w1 << 32) | (w0 & 0xffffffffull));
  } else if constexpr (sizeof(T) == 2) {
    __nv_bfloat16_raw raw;
    raw.x = static_cast<unsigned short>(w0);
    return raw;
  } else {
    return float_of(static_cast<unsigned>(w0));
  }
}

// The flagged element at `at` (kFlaggedWords words of an activation of type T), if every word
// carries `flag`.
template <typename T>
__device__ __forceinline__ bool load_flagged(const unsigned long long* at, unsigned flag, T& value) {
  const unsigned long long w0 = load_flagged_word(at), w1 = sizeof(T) == 8 ? load_flagged_word(at + 1) : w0;
  if (static_cast<unsigned>(w0 >> 32) != flag || static_cast<unsigned>(w1 >> 32) != flag) return false;
  value = flagged_value<T>(w0, w1);
  return true;
}

// (unsigned(a) * b) >> 32.
__device__ __forceinline__ unsigned mul_high(unsigned a, unsigned b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// n / d for 0 <= n < 2^32 / d, without a division: a multiply-high by a reciprocal computed once.
struct Divider {
  int d;
  unsigned inverse;  // floor((2^32 - 1) / d) + 1 (unused for d = 1)
  __device__ explicit Divider(int d_) : d(d_), inverse(d_ > 1 ? 0xFFFFFFFFu / static_cast<unsigned>(d_) + 1u : 0u) {}
  __device__ int operator()(int n) const { return d > 1 ? static_cast<int>(mul_high(static_cast<unsigned>(n), inverse)) : n; }
};

// Which input time feeds output time t through tap k, for one convolution mode; both
// reductions use it. time_term(t) is hoisted out of their loops; source() then costs a few
// integer operations per value:
//   same (0): src = t + k - K/2;  down (1): src = 2 t + k - 1;  up (2, transposed): 2 src = t + 1 - k.
struct TapMap {
  int mode, K, t_in, k_sign, shift;
  Divider by_k;
  __device__ TapMap(int mode_, int K_, int t_in_)
      : mode(mode_), K(K_), t_in(t_in_), k_sign(mode_ == 2 ? -1 : 1), shift(mode_ == 2 ? 1 : 0), by_k(K_) {}
  // The reduction index r = ci * K + k split into input channel and tap, without a division
  // (the host keeps C_in * K below kConvMaxReduction).
  __device__ void split(int r, int& ci, int& k) const {
    ci = by_k(r);
    k = r - ci * K;
  }
  __device__ int time_term(int t) const { return mode == 0 ? t - K / 2 : mode == 1 ? 2 * t - 1 : t + 1; }
  // The source time of (time_term, k) in src; false outside the sequence (or odd, transposed).
  __device__ bool source(int term, int k, int& src) const {
    const int num = term + k_sign * k;
    src = num >> shift;
    return num >= 0 && (num & shift) == 0 && src < t_in;
  }
};

// Programmatic dependent launch and the L2 prefetch (kernels/conv_block.cuh). On GPUs before
// sm_90, and in a launch without the attribute, the two griddepcontrol instructions do nothing.
// The CPU emulation defines its own (it checks the prefetched addresses).
#if !defined(DP_FAST_CPU_EMULATION)
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_previous_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void prefetch_l2(const void* address) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];" ::"l"(address));
#endif
}

// On the H200 (2026-11-26, bench/diag/l1_prefetch.py) a line asked for this way was not in L1
// when loaded later (289 cycles a load, a miss's 291, a hit's 41): what prefetch_epilogue and the
// staged entries expect of it does not happen there, their loads come from L2. Kept until a
// replacement (the operands copied to shared memory by cp.async, or loaded early) is timed.
__device__ __forceinline__ void prefetch_l1(const void* address) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L1 [%0];" ::"l"(address));
#endif
}

__device__ __forceinline__ void grid_barrier_backoff() {
#if defined(__CUDA_ARCH__)
  __nanosleep(64);
#endif
}

// Between two polls of a flagged value (stage_input_flagged): true, poll again at once (each
// poll is an L2 round trip already). The emulation, whose CTAs run one after another, records a
// value that is not there when its reader looks and returns false (it never will be).
__device__ __forceinline__ bool flag_poll_again() { return true; }

// The weight ring's copies (kernels/conv_block.cuh): 16 bytes from global to shared memory,
// asynchronous on sm_80+ (cp.async.cg: through L2 only), in commit groups; copy_async_wait<N>
// returns once at most N of this thread's groups are pending. Before sm_80, plain copies.
__device__ __forceinline__ void copy_async_16(void* smem, const void* global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(smem))),
               "l"(global)
               : "memory");
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(global);
#endif
}

// 4 bytes, through L1 (cp.async.ca: the smallest copy; the chain's parameters), in the same groups.
__device__ __forceinline__ void copy_async_4(void* smem, const void* global) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(static_cast<unsigned>(__cvta_generic_to_shared(smem))),
               "l"(global)
               : "memory");
#else
  *static_cast<int*>(smem) = *static_cast<const int*>(global);
#endif
}

__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void copy_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// The launch's dynamic shared memory (the weight ring's; kConvRingSmemBytes).
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char dynamic_smem_bytes[];
  return dynamic_smem_bytes;
}
#endif

// The chain probe's readings (kChainProbeFields): the global timer (ns), the SM's cycle counter
// and number; in the CPU emulation a steady clock's ns for both and SM 0.
__device__ __forceinline__ long long probe_globaltimer() {
#if defined(__CUDA_ARCH__)
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return static_cast<long long>(t);
#elif defined(DP_FAST_CPU_EMULATION)
  return dp_fast_emulation::now_ns();
#else
  return 0;
#endif
}
__device__ __forceinline__ long long probe_clock() {
#if defined(__CUDA_ARCH__)
  return clock64();
#elif defined(DP_FAST_CPU_EMULATION)
  return dp_fast_emulation::now_ns();
#else
  return 0;
#endif
}
__device__ __forceinline__ long long probe_smid() {
#if defined(__CUDA_ARCH__)
  unsigned id;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(id));
  return id;
#else
  return 0;
#endif
}

// Asks L2 for the start of the CTA's weight slice, w[row0 + i][r_lo, r_hi) for i < rows: about
// `bytes` in all, the same share of every row, at least one line each; one request per line
// (every line holds bytes of the slice; the first is the line its first byte lies in).
template <typename W>
__device__ void prefetch_weight_slice(const W* w, int w_row, int row0, int rows, int r_lo, int r_hi, int bytes) {
  if (bytes <= 0 || rows <= 0 || r_lo >= r_hi) return;
  constexpr int kLine = kConvPrefetchLineBytes;
  constexpr uintptr_t kLineMask = ~static_cast<uintptr_t>(kLine - 1);
  // A row's slice spans at most this many lines (one more than its length when it is unaligned).
  const int64_t most_lines = (static_cast<int64_t>(r_hi - r_lo) * static_cast<int64_t>(sizeof(W)) + kLine - 1) / kLine + 1;
  const int lines = static_cast<int>(min(most_lines, static_cast<int64_t>(max(bytes / (rows * kLine), 1))));
  for (int j = threadIdx.x; j < rows * lines; j += kThreads) {
    const int row = j / lines, line = j - row * lines;
    const W* row_w = w + static_cast<int64_t>(row0 + row) * w_row;
    const uintptr_t at = (reinterpret_cast<uintptr_t>(row_w + r_lo) & kLineMask) + static_cast<uintptr_t>(line) * kLine;
    if (at < reinterpret_cast<uintptr_t>(row_w + r_hi)) prefetch_l2(reinterpret_cast<const void*>(at));
  }
}

// cat(x, x2) along channels, read through the two operands' strides held in registers: the
// offset of (channel ci, batch b, time src) in the operand that holds ci (x when first, i.e.
// ci < c1). 32-bit: the host checks that every operand's offsets fit.
struct CatInput {
  int sb1, sc1, st1, sb2, sc2, st2, c1;
  __device__ CatInput(const Operand& a, const Operand& a2, int c1_)
      : sb1(static_cast<int>(a.sb)), sc1(static_cast<int>(a.sc)), st1(static_cast<int>(a.st)),
        sb2(static_cast<int>(a2.sb)), sc2(static_cast<int>(a2.sc)), st2(static_cast<int>(a2.st)), c1(c1_) {}
  __device__ int offset(bool first, int ci, int b, int src) const {
    return b * (first ? sb1 : sb2) + (first ? ci : ci - c1) * (first ? sc1 : sc2) + src * (first ? st1 : st2);
  }
};

// The weight dtype's code (for the plan's constants: kConvChunk, kConvRingStages, ...).
template <typename W>
constexpr int kWeightDType = sizeof(W) == 8 ? kF64 : sizeof(W) == 2 ? kBF16 : kF32;

// A reduction's weight ring (kernels/conv_block.cuh): stage j holds the weights of the tile's
// ROWS rows at r_lo + kSpan j + [0, kSpan) (kSpan = kConvChunk: the GEMV reduction's 256, the
// tiled one's chunk), row i at [i * kSpan, (i + 1) * kSpan) of its buffer (buffer j % kStages of
// the dynamic shared memory): a reader takes row i's weight at index r0 + c from
// ws[i * kSpan + c], consecutive c in consecutive words (no bank conflicts). Thread tid copies
// pieces tid + 256 q of 16 bytes, and commits one group per stage (an empty one past the
// reduction), so that stage j is complete, for this thread, once at most kStages - 2 of its
// groups are pending; stage(j)'s CTA barrier then makes it complete for all and frees the
// buffer stage j - 1 was read from, which the copy of stage j + kStages - 1 reuses. Rows past
// row_end copy the last row (never stored); pieces past r_hi are not copied, and the reader
// must not use them.
template <typename W, int NC>
struct WeightRing {
  using A = typename AccOf<W>::type;
  static constexpr int kRows = kConvRowsPerCta(NC);
  static constexpr int kSpan = kConvChunk(kWeightDType<W>, NC);   // reduction indices per stage
  static constexpr int kVec = 16 / static_cast<int>(sizeof(W));   // weights per piece
  static constexpr int kRowPieces = kSpan / kVec;                  // pieces per row and stage
  static constexpr int kTotal = kRows * kRowPieces;                // pieces per stage
  static constexpr int kPieces = (kTotal + kThreads - 1) / kThreads;  // per thread (some idle if fewer)
  static constexpr int kStages = kConvRingStages(kWeightDType<W>, NC);
  static constexpr int kStageElements = kRows * kSpan;
  static_assert(kThreads % kRowPieces == 0, "a thread's pieces share a column");
  static_assert(kStages * kStageElements * static_cast<int>(sizeof(W)) <= kConvRingBytes, "the ring fits its memory");
  // Piece tid + kThreads q of a stage is row (tid + kThreads q) / kRowPieces at column col (the
  // same for every q), kVec (tid + kThreads q) in the stage's buffer.
  W* ring;
  const W* base;          // w[row0][r_lo + col]
  int row_off[kPieces];   // the pieces' rows, times w_row
  int col, extent, steps;  // col; r_hi - r_lo; stages

  __device__ WeightRing(const W* w, int w_row, int row0, int row_end, int r_lo, int r_hi)
      : ring(reinterpret_cast<W*>(dynamic_smem())), col(static_cast<int>(threadIdx.x) % kRowPieces * kVec),
        extent(r_hi - r_lo), steps(r_hi > r_lo ? (r_hi - r_lo + kSpan - 1) / kSpan : 0) {
    base = w + static_cast<int64_t>(row0) * w_row + r_lo + col;
    const int last_row = max(min(row_end - row0, kRows) - 1, 0);
#pragma unroll
    for (int q = 0; q < kPieces; ++q) {
      row_off[q] = min((static_cast<int>(threadIdx.x) + kThreads * q) / kRowPieces, last_row) * w_row;
    }
  }
  // Stage j's copies (nothing past the last stage), then the commit of its group.
  __device__ void issue(int j) {
    if (j < steps && col < extent - j * kSpan) {  // the piece lies inside the reduction
      W* buffer = ring + (j % kStages) * kStageElements + static_cast<int>(threadIdx.x) * kVec;
      const W* from = base + static_cast<int64_t>(j) * kSpan;
#pragma unroll
      for (int q = 0; q < kPieces; ++q) {
        if (kTotal % kThreads == 0 || static_cast<int>(threadIdx.x) + kThreads * q < kTotal) {
          copy_async_16(buffer + kThreads * kVec * q, from + row_off[q]);
        }
      }
    }
    copy_async_commit();
  }
  // The first kStages - 1 stages' copies, once every thread is done with what the buffers held
  // (the last stages of the reduction before, read right up to its end).
  __device__ void start() {
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kStages - 1; ++j) issue(j);
  }
  // Stage j's buffer, complete for the whole CTA; the copy of stage j + kStages - 1 issued.
  __device__ const W* stage(int j) {
    copy_async_wait<kStages - 2>();
    __syncthreads();
    issue(j + kStages - 1);
    return ring + (j % kStages) * kStageElements;
  }
  // Row i's weight at index r0 + c of stage `ws` (r0 its first), zero past r_hi (read anyway,
  // inside the buffer: a select, not a branch around the load).
  __device__ A at(const W* ws, int i, int c, int r0, int r_hi) const {
    const A v = static_cast<A>(to_f(ws[i * kSpan + c]));
    return r0 + c < r_hi ? v : A(0);
  }
};

// The tiled reduction's gathered chunk in shared memory: kChunk rows of NC columns, each row
// padded by one piece of kColsPiece values, the values a lane reads at once: up to 32 columns a
// 16-byte piece (LDS.128; rows an odd number of pieces apart, so the 8 lanes of each
// quarter-warp hit different banks), at 64 columns (whose kernel would spill in its loop holding
// the pieces) one value.
template <typename A, int NC>
constexpr int kColsPiece = NC <= 32 ? 16 / static_cast<int>(sizeof(A)) : 1;
template <typename A, int NC>
constexpr int kColsRow = NC + kColsPiece<A, NC>;
template <typename A>
struct alignas(16) ColsPiece {  // a 16-byte piece of a row
  A v[16 / sizeof(A)];
};

// One reduction (the convolution, or the 1x1 residual with K = 1, mode 0) over r in
// [r_lo, r_hi) into acc; cols: shared (kChunk, kColsRow) scratch. ring: as gemv_reduce's (the
// weights of the next chunk loaded into registers, or through the weight ring).
template <typename W, int NC>
__device__ void reduce(typename AccOf<W>::type (&acc)[kConvRowsPerCta(NC) / kWarps][NC],
                       const W* __restrict__ w, int w_row, int r_lo, int r_hi, const Operand& a,
                       const Operand& a2, int c1, int K, int mode, int t_in, int row0, int row_end,
                       int t_pad, int b0, int batch, int t_out,
                       typename AccOf<W>::type (*cols)[kColsRow<typename AccOf<W>::type, NC>], int ring = 0) {
  using A = typename AccOf<W>::type;
  constexpr int RPW = kConvRowsPerCta(NC) / kWarps;
  constexpr int kChunk = kConvChunk(kWeightDType<W>, NC);  // the weight ring's stage too
  constexpr int kPerLane = kChunk / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // Loop-invariant, per thread: its rows' weights (rows past row_end re-read the last row; their
  // sums are never written) and, since kThreads is a multiple of NC, its one column n of the
  // gathered chunk (see gemv_reduce for the source-index terms).
  const W* w_row_ptr[RPW];
#pragma unroll
  for (int i = 0; i < RPW; ++i) {
    w_row_ptr[i] = w + static_cast<int64_t>(max(min(row0 + warp * RPW + i, row_end - 1), 0)) * w_row;
  }
  A wv[RPW][kPerLane], wn[RPW][kPerLane];  // wn: carried (bfloat16 weights widened into wv)
  auto load_w = [&](A (&dst)[RPW][kPerLane], int r0) {
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int r = r0 + lane + 32 * j;
        dst[i][j] = r < r_hi ? carried<A>(w_row_ptr[i][r]) : A(0);
      }
    }
  };
  const int n = threadIdx.x % NC, t = n % t_pad, b = b0 + n / t_pad;
  const bool col_ok = t < t_out && b < batch;
  const TapMap taps(mode, K, t_in);
  const int t_term = taps.time_term(t);
  // The chunk's input columns, gathered into registers one chunk ahead (all loads independent,
  // in flight together; bfloat16 carried, widened as they are stored), then stored to shared
  // memory. x and x2 share a dtype (checked by the host), so the dtype is switched on once per
  // chunk, not once per value.
  constexpr int kGather = kChunk * NC / kThreads;
  A gv[kGather];
  const CatInput in(a, a2, c1);
  auto gather_as = [&](int r0, auto element) {  // element: a value of the activations' type
    using T = decltype(element);
    const T* x1 = static_cast<const T*>(a.ptr);
    const T* x2 = static_cast<const T*>(a2.ptr);
#pragma unroll
    for (int q = 0; q < kGather; ++q) {
      const int r = r0 + (static_cast<int>(threadIdx.x) + q * kThreads) / NC;  // a shift: NC is a power of 2
      int ci, k, src;
      taps.split(r, ci, k);
      const bool ok = taps.source(t_term, k, src) && col_ok && r < r_hi;
      const bool first = ci < c1;
      gv[q] = ok ? carried<A>((first ? x1 : x2)[in.offset(first, ci, b, src)]) : A(0);
    }
  };
  auto gather = [&](int r0) {
    switch (a.dtype) {
      case kBF16: gather_as(r0, __nv_bfloat16{}); break;
      case kF64: gather_as(r0, double{}); break;
      default: gather_as(r0, float{}); break;
    }
  };
  auto store_gathered = [&] {
#pragma unroll
    for (int q = 0; q < kGather; ++q) {
      const int e = threadIdx.x + q * kThreads;
      cols[e / NC][e % NC] = a.dtype == kBF16 ? carried_widen<__nv_bfloat16>(gv[q]) : gv[q];
    }
  };
  // acc += the chunk's weights x its columns; weight(i, j): row warp * RPW + i's weight at
  // chunk index lane + 32 j.
  auto multiply = [&](auto weight) {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      A wr[RPW];
#pragma unroll
      for (int i = 0; i < RPW; ++i) wr[i] = weight(i, j);
      const A* col = cols[lane + 32 * j];
      constexpr int kPiece = kColsPiece<A, NC>;
#pragma unroll
      for (int n0 = 0; n0 < NC; n0 += kPiece) {
        A xv[kPiece];
        if constexpr (kPiece > 1) {
          const ColsPiece<A> piece = *reinterpret_cast<const ColsPiece<A>*>(col + n0);  // 16 bytes at once
#pragma unroll
          for (int n = 0; n < kPiece; ++n) xv[n] = piece.v[n];
        } else {
          xv[0] = col[n0];
        }
#pragma unroll
        for (int n = 0; n < kPiece; ++n)
#pragma unroll
          for (int i = 0; i < RPW; ++i) acc[i][n0 + n] += wr[i] * xv[n];
      }
    }
  };
  if (ring != 0) {
    // Every thread walks every chunk (the ring's barriers: stage(j)'s also frees cols).
    WeightRing<W, NC> weights(w, w_row, row0, row_end, r_lo, r_hi);
    if (ring == 1) weights.start();
    if (r_lo < r_hi) gather(r_lo);
    for (int j = 0; j < weights.steps; ++j) {
      const int r0 = r_lo + j * kChunk;
      const W* ws = weights.stage(j);  // and the previous chunk's columns are consumed
      store_gathered();
      if (r0 + kChunk < r_hi) gather(r0 + kChunk);
      __syncthreads();
      multiply([&](int i, int jj) { return weights.at(ws, warp * RPW + i, lane + 32 * jj, r0, r_hi); });
    }
    copy_async_wait<0>();  // only empty groups are left
    return;
  }
  if (r_lo < r_hi) {
    load_w(wn, r_lo);
    gather(r_lo);
  }
  for (int r0 = r_lo; r0 < r_hi; r0 += kChunk) {
#pragma unroll
    for (int i = 0; i < RPW; ++i)
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) wv[i][j] = carried_widen<W>(wn[i][j]);
    __syncthreads();  // the previous chunk's columns are consumed
    store_gathered();
    if (r0 + kChunk < r_hi) {  // the next chunk's weights and columns: in flight during this chunk's math
      load_w(wn, r0 + kChunk);
      gather(r0 + kChunk);
    }
    __syncthreads();
    multiply([&](int i, int j) { return wv[i][j]; });
  }
}

// Sums v[0, COUNT) over the warp's 32 lanes (COUNT a power of 2, 2 to 64), halving the values
// each lane holds at every step (COUNT / 2 shuffles, then COUNT / 4, ...) down to two, then
// adding those over the lanes not yet summed (COUNT < 64): afterwards lane l holds the sums of
// values 2 l' and 2 l' + 1 in v[0] and v[1], l' = l mod COUNT / 2. COUNT - 2 + 2 (5 - log2(COUNT
// / 2)) shuffles in all, against 5 COUNT for a butterfly per value.
template <int COUNT, typename A>
__device__ __forceinline__ void warp_reduce_scatter(A* v, int lane) {
  static_assert(COUNT >= 2 && COUNT <= 64 && (COUNT & (COUNT - 1)) == 0, "a power of 2 of at most 64 values");
  if constexpr (COUNT > 2) {
    constexpr int kHalf = COUNT / 2, kOffset = COUNT / 4;
    const bool upper = (lane & kOffset) != 0;  // keeps the upper half, sends the lower
#pragma unroll
    for (int i = 0; i < kHalf; ++i) {
      const A send = upper ? v[i] : v[i + kHalf];
      const A keep = upper ? v[i + kHalf] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, kOffset);
    }
    warp_reduce_scatter<kHalf>(v, lane);
  }
}

template <int COUNT, typename A>
__device__ __forceinline__ void warp_sum_scatter(A* v, int lane) {
  warp_reduce_scatter<COUNT>(v, lane);  // summed over lane bits below log2(COUNT / 2)
#pragma unroll
  for (int offset = COUNT / 2; offset < 32; offset <<= 1) {  // and over the rest
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], offset);
    v[1] += __shfl_xor_sync(0xffffffffu, v[1], offset);
  }
}

constexpr int kGemvAccumulators = kConvGemvAccumulators;

// Every thread's kGemvAccumulators values summed over the CTA into tile[0, kGemvAccumulators):
// a reduce-scatter over each warp, then a sum over the warps; scratch: kWarps *
// kGemvAccumulators values. Ends with a barrier: tile is complete, scratch free.
template <typename A>
__device__ void sum_over_cta(A (&acc)[kGemvAccumulators], A* tile, A* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  warp_sum_scatter<kGemvAccumulators>(acc, lane);
  scratch[warp * kGemvAccumulators + 2 * lane] = acc[0];
  scratch[warp * kGemvAccumulators + 2 * lane + 1] = acc[1];
  __syncthreads();
  if (threadIdx.x < kGemvAccumulators) {
    A sum = A(0);
#pragma unroll
    for (int v = 0; v < kWarps; ++v) sum += scratch[v * kGemvAccumulators + threadIdx.x];
    tile[threadIdx.x] = sum;
  }
  __syncthreads();
}

// The reduction for few columns (NC <= kConvGemvMaxColumns, batch 1 at short horizons): thread
// tid takes r = r_lo + tid + kThreads j, holds that r's NC input values in registers and
// streams the weights of all ROWS rows at that r (ROWS * NC = kGemvAccumulators products per
// weight column, each into its own accumulator), so each input value is gathered once per CTA
// and each weight costs NC multiply-adds and one coalesced load. The accumulators are then
// summed over the CTA into tile (ROWS x NC); scratch: kWarps * kGemvAccumulators values.
// ring: 0, the weights loaded into registers, the next index's while this one's are used; 1,
// through the weight ring (WeightRing), started here; 2, the ring already started (by the
// kernel, before its wait for the previous launch).

template <typename W, int NC>
__device__ void gemv_reduce(const W* __restrict__ w, int w_row, int r_lo, int r_hi, const Operand& a,
                            const Operand& a2, int c1, int K, int mode, int t_in, int row0, int row_end,
                            int t_pad, int b0, int batch, int t_out, typename AccOf<W>::type* tile,
                            typename AccOf<W>::type* scratch, int ring = 0) {
  using A = typename AccOf<W>::type;
  constexpr int ROWS = kConvRowsPerCta(NC);
  static_assert(ROWS * NC == kGemvAccumulators, "the reduce-scatter takes 64 values per lane");
  // Loop-invariant, per CTA: each row's weight offset (rows past row_end re-read the last row;
  // their sums are never written) and each column's batch element and time term (TapMap).
  const W* w_base = w + static_cast<int64_t>(row0) * w_row;
  const int last_row = max(min(row_end - row0, ROWS) - 1, 0);
  int w_off[ROWS];
#pragma unroll
  for (int i = 0; i < ROWS; ++i) w_off[i] = min(i, last_row) * w_row;
  const TapMap taps(mode, K, t_in);
  const CatInput in(a, a2, c1);
  int t_term[NC], col_b[NC];
  bool col_ok[NC];
#pragma unroll
  for (int n = 0; n < NC; ++n) {
    const int t = n % t_pad;
    col_b[n] = b0 + n / t_pad;
    col_ok[n] = t < t_out && col_b[n] < batch;
    t_term[n] = taps.time_term(t);
  }

  // r's weights (every row's) into wd and its input values into xd: independent loads, all in
  // flight together; zeros past r_hi, without a load. bfloat16 values are carried (carried<A>),
  // widened by widen_x / carried_widen<W> after the multiply-adds the loads overlap.
  auto fetch_w = [&](int r, A (&wd)[ROWS]) {
#pragma unroll
    for (int i = 0; i < ROWS; ++i) wd[i] = r < r_hi ? carried<A>(w_base[w_off[i] + r]) : A(0);
  };
  auto fetch_x = [&](int r, A (&xd)[NC]) {
    const bool in_range = r < r_hi;
    int ci = 0, k = 0;
    if (in_range) taps.split(r, ci, k);
    const bool first = ci < c1;  // channel ci of cat(x, x2)
    int off[NC];
    bool ok[NC];
#pragma unroll
    for (int n = 0; n < NC; ++n) {
      int src = 0;
      ok[n] = in_range && taps.source(t_term[n], k, src) && col_ok[n];
      off[n] = in.offset(first, ci, col_b[n], src);
    }
    const void* from = first ? a.ptr : a2.ptr;
    switch (a.dtype) {  // x and x2 share a dtype (checked by the host): one branch per index
      case kBF16: {
        const auto* q = static_cast<const __nv_bfloat16*>(from);
#pragma unroll
        for (int n = 0; n < NC; ++n) xd[n] = ok[n] ? carried<A>(q[off[n]]) : A(0);
        break;
      }
      case kF64: {
        const auto* q = static_cast<const double*>(from);
#pragma unroll
        for (int n = 0; n < NC; ++n) xd[n] = ok[n] ? static_cast<A>(q[off[n]]) : A(0);
        break;
      }
      default: {
        const auto* q = static_cast<const float*>(from);
#pragma unroll
        for (int n = 0; n < NC; ++n) xd[n] = ok[n] ? static_cast<A>(q[off[n]]) : A(0);
        break;
      }
    }
  };
  const bool bf16_x = a.dtype == kBF16;
  auto widen_x = [&](A (&xd)[NC]) {  // a branch, not a select: other dtypes' values stay untouched
    if (bf16_x) {
#pragma unroll
      for (int n = 0; n < NC; ++n) xd[n] = carried_widen<__nv_bfloat16>(xd[n]);
    }
  };
  auto accumulate = [](A (&acc)[kGemvAccumulators], const A (&wv)[ROWS], const A (&xv)[NC]) {
#pragma unroll
    for (int i = 0; i < ROWS; ++i)
#pragma unroll
      for (int n = 0; n < NC; ++n) acc[i * NC + n] += wv[i] * xv[n];
  };

  A acc[kGemvAccumulators];
#pragma unroll
  for (int q = 0; q < kGemvAccumulators; ++q) acc[q] = A(0);
  A xv[NC], xn[NC];
  if (ring != 0) {
    // Every thread walks every stage (the ring's barriers); indices past r_hi add zeros.
    WeightRing<W, NC> weights(w, w_row, row0, row_end, r_lo, r_hi);
    if (ring == 1) weights.start();
    fetch_x(r_lo + static_cast<int>(threadIdx.x), xv);
    widen_x(xv);
    for (int j = 0; j < weights.steps; ++j) {
      const W* ws = weights.stage(j);
      const int r0 = r_lo + j * kThreads, tid = static_cast<int>(threadIdx.x);
      fetch_x(r0 + tid + kThreads, xn);
      A wv[ROWS];
#pragma unroll
      for (int i = 0; i < ROWS; ++i) wv[i] = weights.at(ws, i, tid, r0, r_hi);
      accumulate(acc, wv, xv);
#pragma unroll
      for (int n = 0; n < NC; ++n) xv[n] = xn[n];
      widen_x(xv);
    }
    copy_async_wait<0>();  // only empty groups are left
  } else {
    // Software-pipelined: the next index's loads are issued before this one's multiply-adds, so
    // two indices' loads are in flight per thread (one waited for), not one.
    A wv[ROWS], wn[ROWS];
    int r = r_lo + static_cast<int>(threadIdx.x);
    fetch_w(r, wn);
    fetch_x(r, xv);
#pragma unroll
    for (int i = 0; i < ROWS; ++i) wv[i] = carried_widen<W>(wn[i]);
    widen_x(xv);
    for (; r < r_hi; r += kThreads) {
      fetch_w(r + kThreads, wn);
      fetch_x(r + kThreads, xn);
      accumulate(acc, wv, xv);
#pragma unroll
      for (int i = 0; i < ROWS; ++i) wv[i] = carried_widen<W>(wn[i]);
#pragma unroll
      for (int n = 0; n < NC; ++n) xv[n] = xn[n];
      widen_x(xv);
    }
  }
  sum_over_cta(acc, tile, scratch);
}

// The 32 lanes' partial sums of every (row, column), written to tile[warp row][n]: the warp's
// RPW x NC values reduce-scattered (warp_sum_scatter), lane l writing values 2 l and 2 l + 1.
template <typename A, int NC, int RPW>
__device__ void warp_sum_to_tile(A (&acc)[RPW][NC], A* tile) {
  constexpr int kCount = RPW * NC;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  A v[kCount];
#pragma unroll
  for (int i = 0; i < RPW; ++i)
#pragma unroll
    for (int n = 0; n < NC; ++n) v[i * NC + n] = acc[i][n];
  warp_sum_scatter<kCount>(v, lane);
  if (2 * lane < kCount) {  // tile row warp * RPW + q / NC, column q % NC: offset warp * kCount + q
    tile[warp * kCount + 2 * lane] = v[0];
    tile[warp * kCount + 2 * lane + 1] = v[1];
  }
}

// Bias .. step on a (rows, NC) tile of y (and ry, the 1x1 residual) in shared memory; rows map
// to channels row_first + row, valid below row_len. red: kThreads + 2 * 16 + NC scratch.
// kFlagged (a staged chain entry's, with a slot): each output value is also written to `slot`,
// flagged with `flag` (kernels/conv_block.cuh, ChainFlags). With a head (p.hw) the block's
// output is left in y (zeros outside the block), unstored and unstepped, for `head`.
template <typename W, int NC, bool kFlagged = false>
__device__ void epilogue(const ConvBlockParams& p, typename AccOf<W>::type* y,
                         const typename AccOf<W>::type* ry, int rows, int row_first, int row_len,
                         int b0, typename AccOf<W>::type* red, unsigned long long* slot = nullptr,
                         unsigned flag = 0) {
  using A = typename AccOf<W>::type;
  const W* bias = static_cast<const W*>(p.bias);
  const int total = rows * NC;
  A* const colsum = red + kThreads;  // NC column sums (GroupNorm statistics)
  A* const stat = colsum + NC;       // mean [0, 16), rstd [16, 32) per batch element (bb <= 16)
  auto channel = [&](int row) { return row_first + row; };
  auto valid = [&](int row, int n) {
    const int co = channel(row), t = n % p.t_pad, b = b0 + n / p.t_pad;
    return row < row_len && co < p.c_out && t < p.t_out && b < p.batch;
  };
  // The bias, added in place once (each thread keeps to its own elements e = tid + 256 k here
  // and below, so no barrier is needed before it reads them again).
  for (int e = threadIdx.x; e < total; e += kThreads) {
    const int row = e / NC;
    if (row < row_len && channel(row) < p.c_out) y[e] += static_cast<A>(to_f(bias[channel(row)]));
  }
  if (p.gn_w != nullptr) {
    // Two-pass statistics per batch element of the tile, over (the group's channels, T_out).
    // Thread e takes column e % NC for every row e / NC + k * (kThreads / NC).
    const int n = threadIdx.x % NC;
    for (int pass = 0; pass < 2; ++pass) {
      A s = A(0);
      for (int e = threadIdx.x; e < total; e += kThreads) {
        if (valid(e / NC, n)) {
          const A d = pass == 0 ? y[e] : y[e] - stat[n / p.t_pad];
          s += pass == 0 ? d : d * d;
        }
      }
      // Column n's sum: the lanes of a warp that hold it (lane % NC == n; a warp holds kPerWarp
      // columns) added with shuffles, then thread n adds the warps' (8 values up to 32 columns,
      // 4 at 64; a loop over every thread's, 256 / NC of them, before).
      constexpr int kPerWarp = NC < 32 ? NC : 32;
#pragma unroll
      for (int offset = kPerWarp; offset < 32; offset <<= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
      const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
      if (lane < kPerWarp) red[warp * kPerWarp + lane] = s;
      __syncthreads();
      if (threadIdx.x < NC) {
        A c = A(0);
#pragma unroll
        for (int j = threadIdx.x; j < kWarps * kPerWarp; j += NC) c += red[j];
        colsum[threadIdx.x] = c;
      }
      __syncthreads();
      if (threadIdx.x < p.bb) {
        A c = A(0);
        for (int t = 0; t < p.t_out; ++t) c += colsum[threadIdx.x * p.t_pad + t];
        const A count = static_cast<A>(p.cpg) * p.t_out;
        if (pass == 0) {
          stat[threadIdx.x] = c / count;
        } else {
          stat[16 + threadIdx.x] = A(1) / sqrt(c / count + static_cast<A>(p.eps));
        }
      }
      __syncthreads();
    }
  }
  const bool head = p.hw != nullptr;
  const bool gn = p.gn_w != nullptr, film = p.scale.ptr != nullptr, cond = p.cond.ptr != nullptr;
  const bool res = p.res.ptr != nullptr, res_identity = res && p.rw == nullptr, step = p.sample.ptr != nullptr && !head;
  const StepCoefs<A> coefs = step ? StepCoefs<A>::load(p.coefs) : StepCoefs<A>{};
  for (int e = threadIdx.x; e < total; e += kThreads) {
    const int row = e / NC, n = e % NC;
    if (!valid(row, n)) {
      if (head) y[e] = A(0);
      continue;
    }
    const int co = channel(row), t = n % p.t_pad, b = b0 + n / p.t_pad;
    // Every load first, so their latencies overlap; then the arithmetic.
    const A gamma = gn ? static_cast<A>(to_f(static_cast<const W*>(p.gn_w)[co])) : A(1);
    const A beta = gn ? static_cast<A>(to_f(static_cast<const W*>(p.gn_b)[co])) : A(0);
    const A scale = film ? load_act<A>(p.scale.ptr, p.scale.dtype, b * p.scale.sb + co) : A(1);
    const A shift = cond ? load_act<A>(p.cond.ptr, p.cond.dtype, b * p.cond.sb + co) : A(0);
    const A residual = !res ? A(0)
                       : res_identity ? load_act<A>(p.res.ptr, p.res.dtype, b * p.res.sb + co * p.res.sc + t * p.res.st)
                                      : ry[e] + static_cast<A>(to_f(static_cast<const W*>(p.rb)[co]));
    const A xs = step ? load_act<A>(p.sample.ptr, p.sample.dtype, b * p.sample.sb + co * p.sample.sc + t * p.sample.st) : A(0);
    const A z = step && p.noise.ptr != nullptr
                    ? load_act<A>(p.noise.ptr, p.noise.dtype, b * p.noise.sb + co * p.noise.sc + t * p.noise.st)
                    : A(0);
    A v = y[e];
    if (gn) {
      const int bl = n / p.t_pad;
      v = (v - stat[bl]) * stat[16 + bl];
      v = v * gamma + beta;
    }
    if (p.act == 1) v = silu(v);
    else if (p.act == 2) v = mish(v);
    if (film) v *= scale;
    if (cond) v += shift;
    if (res) v += residual;
    if (head) {
      y[e] = v;
      continue;
    }
    if (step) v = scheduler_step_element<A>(coefs, v, xs, z, static_cast<A>(p.clip));
    store_act<A>(p.out_ptr, p.out.dtype, b * p.out.sb + co * p.out.sc + t * p.out.st, v);
    if constexpr (kFlagged) store_flagged<A>(slot, (static_cast<int64_t>(b) * p.c_out + co) * p.t_out + t, p.out.dtype, v, flag);
  }
}

// The address of element (b, c, t) of a (B, C, T) activation.
__device__ __forceinline__ const void* element_address(const Operand& a, int b, int c, int t) {
  return static_cast<const char*>(a.ptr) + (b * a.sb + c * a.sc + t * a.st) * kConvElementBytes(a.dtype);
}

// Asks L1 for the epilogue's operands of a (rows, NC) tile's valid elements (the same elements
// as `epilogue`: bias, GroupNorm affine and 1x1 residual bias per channel, conditions per batch
// element and channel, identity residual, the step's sample and noise per element), so that
// the epilogue's loads, after the partial sums and the GroupNorm statistics, hit L1. All are
// written before the launch (never by this one): safe to ask for at any point after its wait.
template <typename W, int NC>
__device__ void prefetch_epilogue(const ConvBlockParams& p, int rows, int row_first, int row_len, int b0) {
  for (int e = threadIdx.x; e < rows * NC; e += kThreads) {
    const int row = e / NC, n = e % NC, co = row_first + row, t = n % p.t_pad, b = b0 + n / p.t_pad;
    if (row >= row_len || co >= p.c_out || t >= p.t_out || b >= p.batch) continue;
    if (n == 0) {
      prefetch_l1(static_cast<const W*>(p.bias) + co);
      if (p.gn_w != nullptr) {
        prefetch_l1(static_cast<const W*>(p.gn_w) + co);
        prefetch_l1(static_cast<const W*>(p.gn_b) + co);
      }
      if (p.rb != nullptr) prefetch_l1(static_cast<const W*>(p.rb) + co);
    }
    if (t == 0) {
      if (p.cond.ptr != nullptr) prefetch_l1(element_address(p.cond, b, co, 0));
      if (p.scale.ptr != nullptr) prefetch_l1(element_address(p.scale, b, co, 0));
    }
    if (p.res.ptr != nullptr && p.rw == nullptr) prefetch_l1(element_address(p.res, b, co, t));
    if (p.hw != nullptr) continue;  // the step's operands are the head's (A channels)
    if (p.sample.ptr != nullptr) prefetch_l1(element_address(p.sample, b, co, t));
    if (p.noise.ptr != nullptr) prefetch_l1(element_address(p.noise, b, co, t));
  }
}

// Shared memory of one CTA running conv_block_cta<W, NC>: cols (the im2col chunk of the wide
// reduction) and, after the reductions, the finishing tiles share `smem` (the GEMV reduction's
// scratch lies between tile and rtile); `red` holds the epilogue's reductions.
template <typename W, int NC>
DP_FAST_CONSTEXPR_HD int cta_smem_bytes() {
  using A = typename AccOf<W>::type;
  constexpr bool kGemv = NC <= kConvGemvMaxColumns;
  constexpr int kChunk = kConvChunk(kWeightDType<W>, NC);
  constexpr int kColsBytes = kGemv ? 0 : kChunk * kColsRow<A, NC> * sizeof(A);
  constexpr int kTileBytes = 2 * kConvMaxRegionElements(kWeightDType<W>) * sizeof(A);
  return kColsBytes > kTileBytes ? kColsBytes : kTileBytes;
}
DP_FAST_CONSTEXPR_HD int red_elements(int nc) { return kThreads + 64 + nc; }

// Where tile (pid_c, pid_n, split) of a launch lies: its rows, its region (a GroupNorm group,
// or the tile itself), its batch tile and elements, and its share (split) of the reduction.
struct TileSpan {
  int g, row0, row_end, region_first, region_len, pid_n, b0, split, r_lo, r_hi;
  __device__ int rows(int most) const { return max(min(row_end - row0, most), 0); }
};

template <typename W, int NC>
__device__ TileSpan tile_span(const ConvBlockParams& p, int pid_c, int pid_n, int split) {
  constexpr int ROWS = kConvRowsPerCta(NC);
  constexpr int kChunk = kConvChunk(kWeightDType<W>, NC);
  TileSpan t;
  if (p.gn_w != nullptr) {
    t.g = pid_c / p.tpg;
    t.row0 = t.g * p.cpg + (pid_c % p.tpg) * ROWS;
    t.row_end = min((t.g + 1) * p.cpg, p.c_out);
    t.region_first = t.g * p.cpg;
    t.region_len = p.cpg;
  } else {
    t.g = pid_c;
    t.row0 = pid_c * ROWS;
    t.row_end = p.c_out;
    t.region_first = t.row0;
    t.region_len = ROWS;
  }
  t.pid_n = pid_n;
  t.b0 = pid_n * p.bb;
  t.split = split;
  t.r_lo = split * p.chunks_per_split * kChunk;
  t.r_hi = min(t.r_lo + p.chunks_per_split * kChunk, p.c_in * p.k);
  return t;
}

template <typename W, int NC>
__device__ void prefetch_tile(const ConvBlockParams& p, const TileSpan& t) {
  prefetch_weight_slice(static_cast<const W*>(p.w), p.c_in * p.k, t.row0, t.rows(kConvRowsPerCta(NC)), t.r_lo, t.r_hi,
                        p.prefetch_bytes);
}

// A CTA's arrival at a split region whose `count` CTAs each wrote their partial sums before it,
// as CUTLASS's split-K semaphores do it: the barrier orders every thread's partials before thread
// 0's arrival, whose release makes them visible at device scope to the CTA whose acquire reads
// the final count; that CTA's barrier then orders its threads' reads after it. One fence per
// CTA, not one sequentially consistent fence per thread. Returns (in every thread) whether this
// CTA arrived last; that one resets the counter for the next launch. last: a shared flag.
__device__ bool arrive_at_region(int& counter, int count, int& last) {
  __syncthreads();
  if (threadIdx.x == 0) {
    cuda::atomic_ref<int, cuda::thread_scope_device> arrivals(counter);
    last = arrivals.fetch_add(1, cuda::memory_order_acq_rel) == count - 1;
    if (last) arrivals.store(0, cuda::memory_order_relaxed);  // all have arrived: ready for the next launch
  }
  __syncthreads();
  return last;
}

// The head (p.hw; kernels/conv_block.cuh), run by a CTA whose conv_block_cta finished the region
// g of the tile (pid_c, pid_n, split) (tile_span), whose epilogue left the block's output in smem's
// tile y (rows x NC, rows at channels row_first + row, valid below row_len; zeros elsewhere):
// the region's share of hw @ y, c_head x NC values, each summed by kThreads / (c_head NC)
// threads over a slice of the rows (then over the slices, in order, through red: kThreads
// values), to head_parts[g][pid_n]; then the arrival at batch tile pid_n's head counter, and the
// last of the co_tiles / tpg regions to arrive sums their shares in region order, adds hb,
// applies the step and writes out. Every share is written whole (A x NC), so the sum reads no
// stale value. Not inlined: in the kernels' code it perturbed the register allocation of the
// bfloat16 GEMV loops at 4 columns, whose next loads were then read before the multiply-adds
// (tests/test_cuda_sm90_compile.py). It takes the tile's coordinates, not its span: a span
// passed by reference lives in local memory, and that kernel's loops then loaded the span's
// fields from there (8 local loads a trip). Only the kernels for a block with a head call it
// (conv_block_kernel's kHead, and the chain's).
template <typename W, int NC>
__device__ __noinline__ void head(const ConvBlockParams& p, int pid_c, int pid_n, int split,
                                  const unsigned char* smem, typename AccOf<W>::type* red, int& last) {
  using A = typename AccOf<W>::type;
  const TileSpan t = tile_span<W, NC>(p, pid_c, pid_n, split);
  constexpr int ROWS = kConvRowsPerCta(NC);
  const A* y = reinterpret_cast<const A*>(smem);
  const bool whole = p.tpg * p.split == 1;
  const int rows = whole ? ROWS : p.region, row_first = whole ? t.row0 : t.region_first;
  const int row_len = whole ? (p.gn_w != nullptr ? t.row_end - t.row0 : ROWS) : t.region_len, g = t.g;
  const W* hw = static_cast<const W*>(p.hw);
  A* shares = static_cast<A*>(p.head_parts);
  const int outputs = p.c_head * NC, regions = p.co_tiles / p.tpg;
  const int used = min(rows, min(row_len, p.c_out - row_first));  // the region's rows in the block
  __syncthreads();  // y is the epilogue's, each element written by its own thread
  for (int o0 = 0; o0 < outputs; o0 += kThreads) {
    const int count = min(outputs - o0, kThreads), slices = kThreads / count;
    const int o = o0 + threadIdx.x % count, slice = threadIdx.x / count;
    A s = A(0);
    if (slice < slices) {
      const int a = o / NC, n = o % NC;
      const W* wa = hw + static_cast<int64_t>(a) * p.c_out + row_first;
      for (int row = slice; row < used; row += slices) s += static_cast<A>(to_f(wa[row])) * y[row * NC + n];
    }
    red[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x < count) {
      A share = A(0);
      for (int j = 0; j < slices; ++j) share += red[threadIdx.x + j * count];
      shares[(static_cast<int64_t>(g) * p.n_tiles + pid_n) * outputs + o0 + threadIdx.x] = share;
    }
    __syncthreads();
  }
  if (!arrive_at_region(p.head_counters[pid_n], regions, last)) return;
  const bool step = p.sample.ptr != nullptr;
  const StepCoefs<A> coefs = step ? StepCoefs<A>::load(p.coefs) : StepCoefs<A>{};
  for (int o = threadIdx.x; o < outputs; o += kThreads) {
    const int a = o / NC, n = o % NC, t = n % p.t_pad, b = pid_n * p.bb + n / p.t_pad;
    if (t >= p.t_out || b >= p.batch) continue;
    const A bias = static_cast<A>(to_f(static_cast<const W*>(p.hb)[a]));
    const A xs = step ? load_act<A>(p.sample.ptr, p.sample.dtype, b * p.sample.sb + a * p.sample.sc + t * p.sample.st) : A(0);
    const A z = step && p.noise.ptr != nullptr
                    ? load_act<A>(p.noise.ptr, p.noise.dtype, b * p.noise.sb + a * p.noise.sc + t * p.noise.st)
                    : A(0);
    A v = A(0);
#pragma unroll 8  // independent loads in flight together
    for (int r = 0; r < regions; ++r) v += __ldcg(shares + (static_cast<int64_t>(r) * p.n_tiles + pid_n) * outputs + o);
    v += bias;
    if (step) v = scheduler_step_element<A>(coefs, v, xs, z, static_cast<A>(p.clip));
    store_act<A>(p.out_ptr, p.out.dtype, b * p.out.sb + a * p.out.sc + t * p.out.st, v);
  }
}

// One CTA's tile (span t) of one block: its reductions, then the epilogue, or its
// partials and, when it is the last of its region to arrive, the region's epilogue; returns
// whether it ran the epilogue (then `head` may follow, with the same smem and red). smem and
// red: cta_smem_bytes<W, NC>() bytes and red_elements(NC) values of shared memory; last: a
// shared flag; ring_started: the weight ring of the convolution's reduction is started
// (start_ring; with p.ring only).
template <typename W, int NC>
__device__ bool conv_block_cta(const ConvBlockParams& p, const TileSpan& t, unsigned char* smem,
                               typename AccOf<W>::type* red, int& last, bool ring_started = false) {
  using A = typename AccOf<W>::type;
  constexpr bool kGemv = NC <= kConvGemvMaxColumns;
  constexpr int ROWS = kConvRowsPerCta(NC);
  constexpr int kChunk = kConvChunk(kWeightDType<W>, NC);
  constexpr int kTileElements = kConvMaxRegionElements(kWeightDType<W>);
  static_assert(!kGemv || ROWS * NC + kWarps * kGemvAccumulators <= kTileElements, "GEMV scratch overlaps rtile");
  const int g = t.g, row0 = t.row0, row_end = t.row_end, region_first = t.region_first, region_len = t.region_len;
  const int pid_n = t.pid_n, b0 = t.b0, split = t.split, r_lo = t.r_lo, r_hi = t.r_hi;
  const W* w = static_cast<const W*>(p.w);
  A* tile = reinterpret_cast<A*>(smem);
  A* rtile = tile + kTileElements;

  const int R = p.c_in * p.k;
  const bool res_conv = p.res.ptr != nullptr && p.rw != nullptr;
  const int q_lo = split * p.res_chunks_per_split * kChunk, q_hi = min(q_lo + p.res_chunks_per_split * kChunk, p.cr);
  const bool whole = p.tpg * p.split == 1;  // the CTA holds its whole region: it finishes it
  const int whole_rows = p.gn_w != nullptr ? row_end - row0 : ROWS;
  // The epilogue's operands asked of L1 now, to land during the reductions (a CTA that may
  // finish a split region asks once it knows, with its partial sums).
  if (whole) prefetch_epilogue<W, NC>(p, ROWS, row0, whole_rows, b0);
  if constexpr (kGemv) {
    A* scratch = tile + ROWS * NC;
    gemv_reduce<W, NC>(w, R, r_lo, r_hi, p.x, p.x2, p.c1, p.k, p.mode, p.t_in, row0, row_end, p.t_pad, b0,
                       p.batch, p.t_out, tile, scratch, p.ring ? (ring_started ? 2 : 1) : 0);
    if (res_conv) {
      gemv_reduce<W, NC>(static_cast<const W*>(p.rw), p.cr, q_lo, q_hi, p.res, p.res2, p.cr1, 1, 0, p.t_out,
                         row0, row_end, p.t_pad, b0, p.batch, p.t_out, rtile, scratch, p.ring);
    }
  } else {
    constexpr int RPW = ROWS / kWarps;
    auto cols = reinterpret_cast<A(*)[kColsRow<A, NC>]>(smem);
    A acc[RPW][NC], racc[RPW][NC];
#pragma unroll
    for (int i = 0; i < RPW; ++i)
#pragma unroll
      for (int n = 0; n < NC; ++n) acc[i][n] = racc[i][n] = A(0);
    reduce<W, NC>(acc, w, R, r_lo, r_hi, p.x, p.x2, p.c1, p.k, p.mode, p.t_in, row0, row_end, p.t_pad, b0,
                  p.batch, p.t_out, cols, p.ring ? (ring_started ? 2 : 1) : 0);
    if (res_conv) {
      reduce<W, NC>(racc, static_cast<const W*>(p.rw), p.cr, q_lo, q_hi, p.res, p.res2, p.cr1, 1, 0, p.t_out,
                    row0, row_end, p.t_pad, b0, p.batch, p.t_out, cols, p.ring);
    }
    __syncthreads();  // cols are dead: the tiles reuse the space
    warp_sum_to_tile<A, NC, RPW>(acc, tile);
    if (res_conv) warp_sum_to_tile<A, NC, RPW>(racc, rtile);
    __syncthreads();
  }

  if (whole) {
    epilogue<W, NC>(p, tile, rtile, ROWS, row0, whole_rows, b0, red);
    return true;
  }

  // Partials to parts[slot][split][pid_n][co][n]; the last CTA of the region finishes it.
  A* parts = static_cast<A*>(p.parts);
  const int64_t slot = static_cast<int64_t>(p.split) * p.n_tiles * p.c_out * NC;
  for (int e = threadIdx.x; e < ROWS * NC; e += kThreads) {
    const int co = row0 + e / NC;
    if (co < row_end) {
      const int64_t at = ((static_cast<int64_t>(split) * p.n_tiles + pid_n) * p.c_out + co) * NC + e % NC;
      parts[at] = tile[e];
      if (res_conv) parts[slot + at] = rtile[e];
    }
  }
  if (!arrive_at_region(p.counters[pid_n * (p.co_tiles / p.tpg) + g], p.tpg * p.split, last)) return false;
  const int rows = p.region;
  prefetch_epilogue<W, NC>(p, rows, region_first, region_len, b0);  // in flight with the partial sums
  for (int e = threadIdx.x; e < rows * NC; e += kThreads) {
    const int row = e / NC, co = region_first + row;
    A s = A(0), rs = A(0);
    if (row < region_len && co < p.c_out) {
#pragma unroll 8  // independent loads in flight together, not one round trip per split
      for (int sp = 0; sp < p.split; ++sp) {
        const int64_t at = ((static_cast<int64_t>(sp) * p.n_tiles + pid_n) * p.c_out + co) * NC + e % NC;
        s += __ldcg(parts + at);
        if (res_conv) rs += __ldcg(parts + slot + at);
      }
    }
    tile[e] = s;
    rtile[e] = rs;
  }
  __syncthreads();
  epilogue<W, NC>(p, tile, rtile, rows, region_first, region_len, b0, red);
  return true;
}

// Starts the weight ring of tile t's convolution (its first stages in flight), where p has one;
// returns whether it did.
template <typename W, int NC>
__device__ bool start_ring(const ConvBlockParams& p, const TileSpan& t) {
  if (!p.ring) return false;
  WeightRing<W, NC>(static_cast<const W*>(p.w), p.c_in * p.k, t.row0, t.row_end, t.r_lo, t.r_hi).start();
  return true;
}

// kHead: the kernel for a block with a head (p.hw, picked by kernel_for), which calls `head`
// after conv_block_cta. The others have no call in them: the call alone, never taken, changed
// the schedule of the bfloat16 GEMV loops at 4 columns, one of which then read a next load
// before its multiply-adds (tests/test_cuda_sm90_compile.py).
template <typename W, int NC, bool kHead>
__global__ void __launch_bounds__(kThreads, sizeof(W) < 8 && NC <= 16 ? 2 : 1) conv_block_kernel(const __grid_constant__ ConvBlockParams p) {
  __shared__ __align__(16) unsigned char smem[cta_smem_bytes<W, NC>()];
  __shared__ typename AccOf<W>::type red[red_elements(NC)];
  __shared__ int last;
  const TileSpan t = tile_span<W, NC>(p, blockIdx.x, blockIdx.y, blockIdx.z);
  // PDL (kernels/conv_block.cuh): nothing but the weights' prefetch and the first stages of
  // their ring come before the wait.
  prefetch_tile<W, NC>(p, t);
  const bool ring_started = start_ring<W, NC>(p, t);
  allow_dependent_launch();
  wait_for_previous_launch();
  if (conv_block_cta<W, NC>(p, t, smem, red, last, ring_started) && kHead) {
    head<W, NC>(p, blockIdx.x, blockIdx.y, blockIdx.z, smem, red, last);
  }
}

// -- the chain: a whole network evaluation in one launch ----------------------------------------

// The barrier between two blocks of a chain: every CTA of the grid arrives before any goes on
// (a cooperative launch keeps the whole grid resident), on one word of device memory, as
// cooperative groups' grid sync does it: CTA 0 adds 2^31 - (gridDim.x - 1) and every other CTA
// 1, so the word's top bit flips exactly when the last CTA arrives, provided its low 31 bits are
// zero (each barrier adds 2^31 in all and leaves them so: zeros at first, nothing to reset). In two halves, so that a CTA can
// ask L2 for a later block's weights between its arrival and the others'. Ordering as in the
// split arrival: the CTA barrier, then thread 0's release of the CTA's writes with its arrival;
// thread 0's acquire of everyone's with the flip it waits for, then the CTA barrier. `phase`
// (thread 0's) is the top bit before the pending flip: read once at the start, before this CTA
// first arrives (no flip can happen before it does).
struct GridBarrier {
  unsigned* word;
  unsigned phase = 0;
  __device__ explicit GridBarrier(unsigned* word_) : word(word_) {
    if (threadIdx.x == 0) {
      phase = cuda::atomic_ref<unsigned, cuda::thread_scope_device>(*word).load(cuda::memory_order_relaxed) >> 31;
    }
  }
  __device__ void arrive() {
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned add = blockIdx.x == 0 ? 0x80000000u - (gridDim.x - 1) : 1u;
      cuda::atomic_ref<unsigned, cuda::thread_scope_device>(*word).fetch_add(add, cuda::memory_order_release);
    }
  }
  __device__ void wait() {
    if (threadIdx.x == 0) {
      cuda::atomic_ref<unsigned, cuda::thread_scope_device> w(*word);
      while ((w.load(cuda::memory_order_acquire) >> 31) == phase) grid_barrier_backoff();
      phase ^= 1u;
    }
    __syncthreads();
  }
};

// Tile number `tile` of a block in the chain: pid_c + co_tiles (pid_n + n_tiles split), the
// order of a launch's grid; its (pid_c, pid_n, split) as x, y, z.
__device__ inline int3 chain_tile_coords(const ConvBlockParams& p, int tile) {
  return make_int3(tile % p.co_tiles, tile / p.co_tiles % p.n_tiles, tile / (p.co_tiles * p.n_tiles));
}

template <typename W, int NC>
__device__ TileSpan chain_tile_span(const ConvBlockParams& p, int tile) {
  const int3 c = chain_tile_coords(p, tile);
  return tile_span<W, NC>(p, c.x, c.y, c.z);
}

template <typename W, int NC>
__device__ void chain_tile(const ConvBlockParams& p, int tile, unsigned char* smem, typename AccOf<W>::type* red,
                           int& last) {
  const int3 c = chain_tile_coords(p, tile);
  if (conv_block_cta<W, NC>(p, tile_span<W, NC>(p, c.x, c.y, c.z), smem, red, last) && p.hw != nullptr) {
    head<W, NC>(p, c.x, c.y, c.z, smem, red, last);
  }
}

// Asks L2 for the weights of tile `tile` of chain entry p (p.prefetch_bytes of them: the
// recorder asks for whole slices), one block ahead of the entry (see the chain kernel).
template <typename W>
__device__ void chain_prefetch(const ConvBlockParams& p, int tile) {
  if (tile >= p.co_tiles * p.n_tiles * p.split) return;
  if (p.staged) {  // the tile's rows over the whole reduction
    const int row0 = tile * p.region, R = p.c_in * p.k;
    prefetch_weight_slice(static_cast<const W*>(p.w), R, row0, min(p.region, p.c_out - row0), 0, R, p.prefetch_bytes);
    return;
  }
  switch (p.nc) {
    case 4: prefetch_tile<W, 4>(p, chain_tile_span<W, 4>(p, tile)); break;
    case 8: prefetch_tile<W, 8>(p, chain_tile_span<W, 8>(p, tile)); break;
    default: prefetch_tile<W, 16>(p, chain_tile_span<W, 16>(p, tile)); break;
  }
}

template <typename W>
DP_FAST_CONSTEXPR_HD int chain_smem_bytes() {
  constexpr int a = cta_smem_bytes<W, 4>(), b = cta_smem_bytes<W, 8>(), c = cta_smem_bytes<W, 16>();
  constexpr int tiled = a > b ? (a > c ? a : c) : (b > c ? b : c);
  return tiled > kConvStagedBytes ? tiled : kConvStagedBytes;  // a staged entry's input shares it
}

// -- staged chain entries (kernels/conv_block.cuh): the input in shared memory ---------------------

// The elements of a staged entry's input (the whole batch, bb sequences) as the two ways of
// staging it walk them: thread tid takes elements e = tid + kThreads q (consecutive threads,
// consecutive times of a channel: coalesced for a (B, C, T) tensor), channel ci's sequence b at
// time t, stored in the accumulation type at xs[ci * S + b * T_in + t], S = kConvStagedRowLength
// (= per_channel + 1: place(q) = e + ci); batch elements past the batch are zeros. The indices
// split without a division, from fields read once (p lies in shared memory in the chain).
struct StagedWalk {
  int per_channel, total, t_in, batch, c1;
  Divider by_channel, by_time;
  __device__ explicit StagedWalk(const ConvBlockParams& p)
      : per_channel(p.bb * p.t_in), total(p.c_in * p.bb * p.t_in), t_in(p.t_in), batch(p.batch), c1(p.c1),
        by_channel(p.bb * p.t_in), by_time(p.t_in) {}
  __device__ int element(int q) const { return static_cast<int>(threadIdx.x) + q * kThreads; }
  // Element q's channel (first: of x, else of x2), sequence and time; false past the input or the
  // batch (a zero).
  __device__ bool locate(int q, bool& first, int& ci, int& b, int& t) const {
    const int e = element(q);
    ci = by_channel(e);
    const int rest = e - ci * per_channel;
    b = by_time(rest);
    t = rest - b * t_in;
    first = ci < c1;
    return e < total && b < batch;
  }
  __device__ bool inside(int q) const { return element(q) < total; }
  __device__ int place(int q) const {
    const int e = element(q);
    return e + by_channel(e);
  }
};

// cat(x, x2) of a staged entry into xs (StagedWalk): all of a thread's loads in flight at once
// (one round trip, not one per few elements), then stored. At most kMost elements a thread:
// staged_plan_ok keeps C_in (bb T_in + 1) values within kConvStagedBytes.
template <typename A>
__device__ void stage_input(const ConvBlockParams& p, A* xs) {
  constexpr int kMost = kConvStagedBytes / (static_cast<int>(sizeof(A)) * kThreads);
  const StagedWalk walk(p);
  const CatInput in(p.x, p.x2, p.c1);
  A v[kMost];
  auto load_as = [&](auto element) {  // element: a value of the activations' type
    using T = decltype(element);
    const T* x1 = static_cast<const T*>(p.x.ptr);
    const T* x2 = static_cast<const T*>(p.x2.ptr);
    T raw[kMost];  // converted after every load is issued (nvcc would convert, and wait, at each)
#pragma unroll
    for (int q = 0; q < kMost; ++q) {
      bool first;
      int ci, b, t;
      const bool inside = walk.locate(q, first, ci, b, t);
      raw[q] = inside ? (first ? x1 : x2)[in.offset(first, ci, b, t)] : T();  // T(): a zero
    }
#pragma unroll
    for (int q = 0; q < kMost; ++q) v[q] = static_cast<A>(to_f(raw[q]));
  };
  switch (p.x.dtype) {  // x and x2 share a dtype (checked by the host)
    case kBF16: load_as(__nv_bfloat16{}); break;
    case kF64: load_as(double{}); break;
    default: load_as(float{}); break;
  }
#pragma unroll
  for (int q = 0; q < kMost; ++q) {
    if (walk.inside(q)) xs[walk.place(q)] = v[q];
  }
}

// stage_input where x or x2 is read from an earlier entry's flagged slot (x_from, x2_from; the
// other, if any, as stage_input reads it): the same elements to the same places, T the
// activations' type. Every value is asked for at once, all loads issued before any flag is
// looked at (a branch on a loaded flag between two loads would make them one round trip each);
// those whose flag is not this launch's yet are asked for again: the first of them alone until
// it has come (one load a thread, not every value it waits for, which would keep L2 busy with
// polls while the entry before still computes), then all of them, until none is left. A value
// in the slot is the producer's output as stored (rounded to T), so the input is the one
// stage_input would read.
template <typename A, typename T>
__device__ void stage_input_flagged(const ConvBlockParams& p, A* xs, const ChainFlags& flags, unsigned flag) {
  constexpr int kMost = kConvStagedBytes / (static_cast<int>(sizeof(A)) * kThreads);
  static_assert(kMost <= 64, "a pending value a bit");
  constexpr int kWords = sizeof(T) == 8 ? 2 : 1;
  const StagedWalk walk(p);
  const int c1 = p.c1, c2 = p.c_in - c1, t_in = p.t_in;
  const CatInput in(p.x, p.x2, c1);
  const T* x1 = static_cast<const T*>(p.x.ptr);
  const T* x2 = static_cast<const T*>(p.x2.ptr);
  const unsigned long long* s1 = p.x_from > 0 ? flags.slots + (p.x_from - 1) * flags.slot_words : nullptr;
  const unsigned long long* s2 = p.x2_from > 0 ? flags.slots + (p.x2_from - 1) * flags.slot_words : nullptr;
  // An element's flagged words (null: read it directly).
  auto words = [&](bool first, int ci, int b, int t) -> const unsigned long long* {
    const unsigned long long* s = first ? s1 : s2;
    if (s == nullptr) return nullptr;
    return s + static_cast<int64_t>((b * (first ? c1 : c2) + (first ? ci : ci - c1)) * t_in + t) * kWords;
  };
  // The elements read directly (and the zeros past the batch), all loads in flight, then stored;
  // `pending` marks the others, whose values come from slots.
  unsigned long long pending = 0;
  {
    A v[kMost];
#pragma unroll
    for (int q = 0; q < kMost; ++q) {
      bool first;
      int ci, b, t;
      const bool inside = walk.locate(q, first, ci, b, t);
      const bool slot = inside && (first ? s1 : s2) != nullptr;
      v[q] = inside && !slot ? static_cast<A>(to_f((first ? x1 : x2)[in.offset(first, ci, b, t)])) : A(0);
      if (slot) pending |= 1ull << q;
    }
#pragma unroll
    for (int q = 0; q < kMost; ++q) {
      if (walk.inside(q) && ((pending >> q) & 1) == 0) xs[walk.place(q)] = v[q];
    }
  }
  // The flagged words of the elements in `ask` (bit q), every load issued before any flag is
  // looked at, then those carrying the flag stored (their bits cleared from `ask`).
  auto take = [&](unsigned long long& ask) {
    unsigned long long w[kMost][kWords];
#pragma unroll
    for (int q = 0; q < kMost; ++q) {
      bool first;
      int ci, b, t;
      walk.locate(q, first, ci, b, t);
      const unsigned long long* at = ((ask >> q) & 1) != 0 ? words(first, ci, b, t) : nullptr;
#pragma unroll
      for (int k = 0; k < kWords; ++k) w[q][k] = at != nullptr ? load_flagged_word(at + k) : 0ull;
    }
#pragma unroll
    for (int q = 0; q < kMost; ++q) {
      bool ok = ((ask >> q) & 1) != 0;
#pragma unroll
      for (int k = 0; k < kWords; ++k) ok = ok && static_cast<unsigned>(w[q][k] >> 32) == flag;
      if (ok) {
        xs[walk.place(q)] = static_cast<A>(to_f(flagged_value<T>(w[q][0], w[q][kWords - 1])));
        ask &= ~(1ull << q);
      }
    }
  };
  take(pending);
  while (pending != 0) {
    int q0 = 0;
    while (((pending >> q0) & 1) == 0) ++q0;
    bool first;
    int ci, b, t;
    walk.locate(q0, first, ci, b, t);
    const unsigned long long* at0 = words(first, ci, b, t);
    T value;
    bool came = load_flagged<T>(at0, flag, value);
    while (!came && flag_poll_again()) came = load_flagged<T>(at0, flag, value);
    if (!came) break;  // the emulation's: it never comes (recorded there)
    take(pending);
  }
}

// Rows [row0, row0 + rows) of a staged entry (rows <= ROWS = kGemvAccumulators / NC) over the
// whole reduction, into tile (ROWS x NC): the GEMV reduction's layout (thread tid takes
// r = tid + kThreads j, every row's weight at r streamed past r's NC input values), the input
// values read from xs instead of memory. scratch: kWarps * kGemvAccumulators values.
template <typename W, int NC, bool kCopied>
__device__ void staged_reduce(const ConvBlockParams& p, const typename AccOf<W>::type* xs, int row0, int rows,
                              typename AccOf<W>::type* tile, typename AccOf<W>::type* scratch) {
  using A = typename AccOf<W>::type;
  constexpr int ROWS = kGemvAccumulators / NC;
  const int R = p.c_in * p.k, stride = kConvStagedRowLength(p.bb, p.t_in);
  // The tile's weights: copied to shared memory (copy_staged_weights: row i at i * R), or in
  // memory; rows past `rows` are never loaded.
  const W* w_row[ROWS];
#pragma unroll
  for (int i = 0; i < ROWS; ++i) w_row[i] = static_cast<const W*>(p.w) + static_cast<int64_t>(row0 + min(i, rows - 1)) * R;
  const W* const copied = reinterpret_cast<const W*>(dynamic_smem());
  auto weight = [&](int i, int r) { return kCopied ? copied[i * R + r] : w_row[i][r]; };
  const TapMap taps(p.mode, p.k, p.t_in);
  int t_term[NC], col[NC];
  bool col_ok[NC];
#pragma unroll
  for (int n = 0; n < NC; ++n) {
    const int t = n % p.t_pad, b = n / p.t_pad;
    col_ok[n] = t < p.t_out && b < p.batch;
    t_term[n] = taps.time_term(t);
    col[n] = b * p.t_in;
  }
  A acc[kGemvAccumulators];
#pragma unroll
  for (int q = 0; q < kGemvAccumulators; ++q) acc[q] = A(0);
  // Software-pipelined as gemv_reduce: the next index's weights are loaded before this one's
  // multiply-adds, so their latency (L1's, or L2's where the prefetch has not landed) overlaps.
  A wn[ROWS];
  auto load_w = [&](int r) {
#pragma unroll
    for (int i = 0; i < ROWS; ++i) wn[i] = i < rows && r < R ? static_cast<A>(to_f(weight(i, r))) : A(0);
  };
  load_w(threadIdx.x);
  for (int r = threadIdx.x; r < R; r += kThreads) {
    A wv[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; ++i) wv[i] = wn[i];
    load_w(r + kThreads);
    int ci, k;
    taps.split(r, ci, k);
    const A* x_ci = xs + ci * stride;
    A xv[NC];
#pragma unroll
    for (int n = 0; n < NC; ++n) {
      int src;
      xv[n] = taps.source(t_term[n], k, src) && col_ok[n] ? x_ci[col[n] + src] : A(0);
    }
#pragma unroll
    for (int i = 0; i < ROWS; ++i)
#pragma unroll
      for (int n = 0; n < NC; ++n) acc[i * NC + n] += wv[i] * xv[n];
  }
  sum_over_cta(acc, tile, scratch);
}

// Tile `tile_index` of staged entry p; copied: its weights are in shared memory. slot: where
// the entry writes its output flagged too (null: nowhere).
template <typename W, int NC>
__device__ void staged_tile(const ConvBlockParams& p, const typename AccOf<W>::type* xs, int tile_index, bool copied,
                            typename AccOf<W>::type* tile, typename AccOf<W>::type* red, unsigned long long* slot,
                            unsigned flag) {
  const int row0 = tile_index * p.region, rows = min(p.region, p.c_out - row0);
  if (copied) {
    staged_reduce<W, NC, true>(p, xs, row0, rows, tile, tile + kGemvAccumulators);
  } else {
    staged_reduce<W, NC, false>(p, xs, row0, rows, tile, tile + kGemvAccumulators);
  }
  // no GroupNorm and no 1x1 residual (the host checks): the epilogue reads tile only
  if (slot != nullptr) {
    epilogue<W, NC, true>(p, tile, tile, kGemvAccumulators / NC, row0, rows, 0, red, slot, flag);
  } else {
    epilogue<W, NC>(p, tile, tile, kGemvAccumulators / NC, row0, rows, 0, red);
  }
  __syncthreads();  // tile and red are free for the next tile
}

// A staged entry with a ring (kConvStagedRingBytes): tile `tile`'s weights, region rows of
// C_in * K values (contiguous in memory), copied whole to the dynamic shared memory by
// cp.async, one group; nothing for a plan without one or a CTA without the tile. The chain
// issues it between its arrival at the barrier before the entry and its wait there (without
// barriers: once the CTA is done with the entry before); the entry waits for it after staging
// its input.
template <typename W>
__device__ void copy_staged_weights(const ConvBlockParams& p, int tile) {
  if (!p.staged || !p.ring || tile >= p.co_tiles) return;
  constexpr int kVec = 16 / static_cast<int>(sizeof(W));
  const int R = p.c_in * p.k, row0 = tile * p.region, pieces = min(p.region, p.c_out - row0) * R / kVec;
  const W* from = static_cast<const W*>(p.w) + static_cast<int64_t>(row0) * R;
  W* to = reinterpret_cast<W*>(dynamic_smem());
  for (int q = threadIdx.x; q < pieces; q += kThreads) copy_async_16(to + q * kVec, from + q * kVec);
  copy_async_commit();
}

// Asks L1 for what tile `tile` of staged entry p reads besides its input: its rows' weights
// (contiguous; at most p.prefetch_bytes of them, one request per 128-byte line; none where
// they come by the ring, copy_staged_weights) and the epilogue's operands (prefetch_epilogue),
// so that they arrive while the input is staged (after the grid barrier: its acquire
// invalidates L1).
template <typename W, int NC>
__device__ void prefetch_staged_tile(const ConvBlockParams& p, int tile) {
  constexpr int kLine = kConvPrefetchLineBytes;
  const int row0 = tile * p.region, rows = min(p.region, p.c_out - row0);
  const auto* w = reinterpret_cast<const char*>(static_cast<const W*>(p.w) + static_cast<int64_t>(row0) * p.c_in * p.k);
  const int64_t bytes = p.ring ? 0
                               : min(static_cast<int64_t>(rows) * p.c_in * p.k * static_cast<int64_t>(sizeof(W)),
                                     static_cast<int64_t>(p.prefetch_bytes));
  const uintptr_t first = reinterpret_cast<uintptr_t>(w) & ~static_cast<uintptr_t>(kLine - 1);
  const int lines = static_cast<int>((reinterpret_cast<uintptr_t>(w) + bytes - first + kLine - 1) / kLine);
  for (int j = threadIdx.x; j < lines && bytes > 0; j += kThreads) {  // the first from w itself: inside the tensor
    prefetch_l1(j == 0 ? static_cast<const void*>(w) : reinterpret_cast<const void*>(first + j * kLine));
  }
  prefetch_epilogue<W, NC>(p, kGemvAccumulators / NC, row0, rows, 0);
}

// One staged entry on this CTA: nothing without a tile; else the input staged once, then tiles
// blockIdx.x, blockIdx.x + gridDim.x, ... The whole CTA takes the same branch.
// With a flagged exchange (flags.slots set): the input read from earlier entries' flagged slots
// where the entry says so, and the output written to its own slot too, flagged with `flag`.
template <typename W, int NC>
__device__ void staged_block(const ConvBlockParams& p, unsigned char* smem, typename AccOf<W>::type* tile,
                             typename AccOf<W>::type* red, const ChainFlags& flags, unsigned flag) {
  using A = typename AccOf<W>::type;
  if (static_cast<int>(blockIdx.x) >= p.co_tiles) return;
  A* xs = reinterpret_cast<A*>(smem);
  prefetch_staged_tile<W, NC>(p, blockIdx.x);
  if (flags.slots != nullptr && (p.x_from > 0 || p.x2_from > 0)) {
    switch (p.x.dtype) {  // x and x2 share a dtype (checked by the host)
      case kBF16: stage_input_flagged<A, __nv_bfloat16>(p, xs, flags, flag); break;
      case kF64: stage_input_flagged<A, double>(p, xs, flags, flag); break;
      default: stage_input_flagged<A, float>(p, xs, flags, flag); break;
    }
  } else {
    stage_input<A>(p, xs);
  }
  if (p.ring) copy_async_wait<0>();  // the first tile's weights
  __syncthreads();
  unsigned long long* slot = flags.slots != nullptr && p.flag_slot > 0 ? flags.slots + (p.flag_slot - 1) * flags.slot_words
                                                                       : nullptr;
  for (int i = blockIdx.x; i < p.co_tiles; i += gridDim.x) {
    staged_tile<W, NC>(p, xs, i, p.ring && i == blockIdx.x, tile, red, slot, flag);
  }
}

// Whether p is a staged entry the chain kernel can run (the host plans it; conv_block_params
// checks it).
DP_FAST_CONSTEXPR_HD bool staged_plan_ok(const ConvBlockParams& p) {
  const int acc_bytes = p.wdtype == kF64 ? 8 : 4;
  return (p.nc == 4 || p.nc == 8 || p.nc == 16) && p.region >= 1 && p.region * p.nc <= kConvGemvAccumulators &&
         p.bb * p.t_pad == p.nc && p.t_pad >= p.t_out && p.bb >= p.batch && p.n_tiles == 1 && p.split == 1 && p.tpg == 1 &&
         p.gn_w == nullptr && p.rw == nullptr && p.hw == nullptr && static_cast<int64_t>(p.co_tiles) * p.region >= p.c_out &&
         static_cast<int64_t>(p.c_in) * kConvStagedRowLength(p.bb, p.t_in) * acc_bytes <= kConvStagedBytes;
}

// blocks[0, count) one after another, each over the whole grid: CTA i takes the block's tiles
// i, i + gridDim.x, ... (chain_tile_span; a staged entry's after staging its input), then
// arrives at the grid barrier that separates it from the next block and, until the others
// have, asks L2 for its first tile's weights of the block after the next: while a block runs,
// its weights are (mostly) in L2 already and the next one's stream in from memory, so a chain
// whose weights do not fit L2 (the PushT U-Net's 263 MB) streams them without a pause at each
// block. The parameters of the block after the next are copied to shared memory by cp.async
// (an int a thread, no register held) while a block runs, and waited for before it arrives, so
// that no load lies between arriving and waiting: the last CTA to arrive, which all the others
// wait for, goes on at once. The first two blocks' are loaded together at the start.
//
// With a flagged exchange (flags; kernels/conv_block.cuh, ChainFlags) the staged entries hand
// their outputs on through flagged slots, and where flags.barrier_free says so there is no grid
// barrier: at the end of an entry a CTA waits for its own copies only, asks for the next
// entries' weights at once and goes on to poll the next entry's input. The launch's flag is
// words[0] (the launch count) as it was when the kernel started; the last CTA to finish counts
// the launch. With a probe (non-null; kChainProbeFields), thread 0 of each CTA writes a row per
// entry.
template <typename W>
__global__ void __launch_bounds__(kThreads, 1)
    conv_block_chain_kernel(const ConvBlockParams* __restrict__ blocks, int count, unsigned* barrier,
                            const __grid_constant__ ChainFlags flags, long long* __restrict__ probe) {
  constexpr int kParamInts = sizeof(ConvBlockParams) / sizeof(int);
  static_assert(sizeof(ConvBlockParams) % sizeof(int) == 0 && kParamInts <= kThreads,
                "the parameters are copied an int a thread");
  __shared__ __align__(16) unsigned char smem[chain_smem_bytes<W>()];
  __shared__ typename AccOf<W>::type red[red_elements(kConvChainMaxColumns)];
  __shared__ typename AccOf<W>::type staged_scratch[kGemvAccumulators * (kWarps + 1)];  // a staged tile + its CTA sum
  __shared__ int last;
  __shared__ __align__(16) int params[3][kParamInts];  // this block's and the next two's
  __shared__ unsigned launch_flag;
  auto entry = [&](int i) -> const ConvBlockParams& { return *reinterpret_cast<const ConvBlockParams*>(params[i % 3]); };
  auto param = [&](int i) { return reinterpret_cast<const int*>(blocks + i) + threadIdx.x; };  // this thread's int
  GridBarrier grid_barrier(barrier);
  if (threadIdx.x < kParamInts) {
    const int first = *param(0), second = count > 1 ? *param(1) : 0;  // both in flight
    params[0][threadIdx.x] = first;
    params[1][threadIdx.x] = second;
  }
  if (threadIdx.x == 0 && flags.words != nullptr) {
    const unsigned launches = cuda::atomic_ref<unsigned, cuda::thread_scope_device>(flags.words[0]).load(cuda::memory_order_relaxed);
    launch_flag = launches % 0xffffffffu + 1u;  // never 0
  }
  __syncthreads();
  const unsigned flag = launch_flag;
  copy_staged_weights<W>(entry(0), blockIdx.x);
  chain_prefetch<W>(entry(0), blockIdx.x);
  if (count > 1) chain_prefetch<W>(entry(1), blockIdx.x);
  const bool probing = probe != nullptr && threadIdx.x == 0;
  long long gt_start = 0, ck_start = 0, ck_worked = 0, ck_arrived = 0;
  for (int i = 0; i < count; ++i) {
    const ConvBlockParams& p = entry(i);
    if (probing) {
      gt_start = probe_globaltimer();
      ck_start = probe_clock();
    }
    if (i + 2 < count) {  // into entry i - 1's buffer, free since the last barrier; lands while the block runs
      if (threadIdx.x < kParamInts) copy_async_4(&params[(i + 2) % 3][threadIdx.x], param(i + 2));
      copy_async_commit();
    }
    if (p.staged) {
      switch (p.nc) {
        case 4: staged_block<W, 4>(p, smem, staged_scratch, red, flags, flag); break;
        case 8: staged_block<W, 8>(p, smem, staged_scratch, red, flags, flag); break;
        default: staged_block<W, 16>(p, smem, staged_scratch, red, flags, flag); break;
      }
    }
    const int tiles = p.staged ? 0 : p.co_tiles * p.n_tiles * p.split;
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      switch (p.nc) {
        case 4: chain_tile<W, 4>(p, tile, smem, red, last); break;
        case 8: chain_tile<W, 8>(p, tile, smem, red, last); break;
        default: chain_tile<W, 16>(p, tile, smem, red, last); break;
      }
      __syncthreads();  // the tile's shared memory is free for the next one
    }
    long long info = 0;  // read from the entry's parameters here: after the wait other threads copy the next ones over them
    if (probing) {
      ck_arrived = ck_worked = probe_clock();
      const int all = p.staged ? p.co_tiles : tiles;  // a staged entry's CTA takes tiles i, i + gridDim.x, ... too
      const long long ran = all > static_cast<int>(blockIdx.x) ? (all - 1 - static_cast<int>(blockIdx.x)) / gridDim.x + 1 : 0;
      info = static_cast<long long>(gridDim.x) << 32 | static_cast<long long>(p.staged != 0) << 31 | ran;
    }
    if (i + 1 < count) {
      copy_async_wait<0>();   // the parameters of the block after the next (the __syncthreads: for the CTA)
      if (flags.barrier_free) {
        __syncthreads();
      } else {
        grid_barrier.arrive();
      }
      if (probing) ck_arrived = probe_clock();
      // between arriving and waiting: the next entry's weights to shared memory (a staged one
      // with a ring; this CTA is done with its dynamic shared memory), the one after's to L2
      copy_staged_weights<W>(entry(i + 1), blockIdx.x);
      if (i + 2 < count) chain_prefetch<W>(entry(i + 2), blockIdx.x);
      if (!flags.barrier_free) grid_barrier.wait();
    }
    if (probing) {
      long long* row = probe + (static_cast<long long>(i) * gridDim.x + blockIdx.x) * kChainProbeFields;
      row[2] = ck_start;
      row[3] = ck_worked;
      row[4] = ck_arrived;
      row[5] = probe_clock();
      row[1] = probe_globaltimer();
      row[0] = gt_start;
      row[6] = probe_smid();
      row[7] = info;
    }
  }
  if (flags.words != nullptr && threadIdx.x == 0) {  // count the launch once every CTA has read its number
    cuda::atomic_ref<unsigned, cuda::thread_scope_device> done(flags.words[1]);
    if (done.fetch_add(1u, cuda::memory_order_acq_rel) == gridDim.x - 1) {
      done.store(0u, cuda::memory_order_relaxed);
      cuda::atomic_ref<unsigned, cuda::thread_scope_device>(flags.words[0]).fetch_add(1u, cuda::memory_order_relaxed);
    }
  }
}

using ConvBlockKernel = void (*)(ConvBlockParams);
using ConvBlockChainKernel = void (*)(const ConvBlockParams*, int, unsigned*, ChainFlags, long long*);

#if defined(DP_FAST_CONV_BLOCK_DISPATCH)
// A plan conv_block_kernel runs (the weight dtype and column count of an instantiation, a region
// its tile holds); decided without naming a kernel, so that the dispatch below instantiates none.
bool conv_block_plan_ok(const ConvBlockParams& p) {
  const bool dtype = p.wdtype == kF32 || p.wdtype == kBF16 || p.wdtype == kF64;
  const bool columns = p.nc == 4 || p.nc == 8 || p.nc == 16 || p.nc == 32 || p.nc == 64;
  return dtype && columns && !p.staged && p.region * p.nc <= kConvMaxRegionElements(p.wdtype) && p.nc % p.t_pad == 0 &&
         p.bb * p.t_pad == p.nc;
}
#endif

#if defined(DP_FAST_CONV_BLOCK_KERNELS)
template <typename W, bool kHead>
ConvBlockKernel kernel_for_columns(int nc) {
  switch (nc) {
    case 4: return conv_block_kernel<W, 4, kHead>;
    case 8: return conv_block_kernel<W, 8, kHead>;
    case 16: return conv_block_kernel<W, 16, kHead>;
    case 32: return conv_block_kernel<W, 32, kHead>;
    default: return conv_block_kernel<W, 64, kHead>;  // conv_block_plan_ok: 4, 8, 16, 32 or 64
  }
}

template <typename W>
ConvBlockKernel kernel_for(const ConvBlockParams& p) {
  return p.hw != nullptr ? kernel_for_columns<W, true>(p.nc) : kernel_for_columns<W, false>(p.nc);
}

#if defined(DP_FAST_CPU_EMULATION)
// The kernel instantiation for p's weight dtype and column count; nullptr for a plan it cannot
// run. Launched with grid (co_tiles, n_tiles, split) and kThreads threads (by the CPU emulation
// in tests/emulation/conv_block_cpu.cpp; on a GPU by launch_conv_block_as).
ConvBlockKernel conv_block_kernel_for(const ConvBlockParams& p) {
  if (!conv_block_plan_ok(p)) return nullptr;
  switch (p.wdtype) {
    case kF32: return kernel_for<float>(p);
    case kBF16: return kernel_for<__nv_bfloat16>(p);
    default: return kernel_for<double>(p);
  }
}

ConvBlockChainKernel conv_block_chain_kernel_for(int wdtype) {
  switch (wdtype) {
    case kF32: return conv_block_chain_kernel<float>;
    case kBF16: return conv_block_chain_kernel<__nv_bfloat16>;
    case kF64: return conv_block_chain_kernel<double>;
    default: return nullptr;
  }
}
#endif
#endif

}  // namespace

#if defined(DP_FAST_CONV_BLOCK_DISPATCH)
bool conv_block_chain_accepts(const ConvBlockParams& p) {
  return p.staged ? staged_plan_ok(p) : conv_block_plan_ok(p) && p.nc <= kConvChainMaxColumns;
}
#endif

#if !defined(DP_FAST_CPU_EMULATION)
// One launch of conv_block_kernel, or of the chain kernel, for weights of type W (W's
// translation unit defines them; the dispatch below picks W by the plan's dtype).
template <typename W>
cudaError_t launch_conv_block_as(const ConvBlockParams& p, cudaStream_t stream);
template <typename W>
cudaError_t launch_conv_block_chain_as(const ConvBlockParams* blocks, int count, unsigned* barrier, int grid,
                                       int ring_bytes, ChainFlags flags, long long* probe, cudaStream_t stream);

#if defined(DP_FAST_CONV_BLOCK_KERNELS)
template <typename W>
cudaError_t launch_conv_block_as(const ConvBlockParams& p, cudaStream_t stream) {
  const ConvBlockKernel kernel = kernel_for<W>(p);
  const int ring_bytes = kConvRingSmemBytes(p);
  if (ring_bytes > 0) {  // above the default 48 KiB with the static shared memory
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ring_bytes);
    if (err != cudaSuccess) return err;
  }
  cudaLaunchAttribute pdl[1] = {};
  pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  pdl[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(p.co_tiles, p.n_tiles, p.split);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = ring_bytes;
  config.stream = stream;
  config.attrs = pdl;
  config.numAttrs = p.pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, p);
}

template <typename W>
cudaError_t launch_conv_block_chain_as(const ConvBlockParams* blocks, int count, unsigned* barrier, int grid,
                                       int ring_bytes, ChainFlags flags, long long* probe, cudaStream_t stream) {
  const ConvBlockChainKernel kernel = conv_block_chain_kernel<W>;
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess && ring_bytes > 0) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ring_bytes);
  }
  if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, ring_bytes);
  if (err != cudaSuccess) return err;
  grid = min(grid, per_sm * sms);  // every CTA resident at once, or the grid barrier never opens
  if (grid < 1) return cudaErrorCooperativeLaunchTooLarge;
  cudaLaunchAttribute cooperative[1] = {};
  cooperative[0].id = cudaLaunchAttributeCooperative;
  cooperative[0].val.cooperative = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = ring_bytes;
  config.stream = stream;
  config.attrs = cooperative;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, blocks, count, barrier, flags, probe);
}
#endif

#if defined(DP_FAST_CONV_BLOCK_WEIGHTS)
template cudaError_t launch_conv_block_as<DP_FAST_CONV_BLOCK_WEIGHTS>(const ConvBlockParams&, cudaStream_t);
template cudaError_t launch_conv_block_chain_as<DP_FAST_CONV_BLOCK_WEIGHTS>(const ConvBlockParams*, int, unsigned*, int, int,
                                                                            ChainFlags, long long*, cudaStream_t);
#endif

#if defined(DP_FAST_CONV_BLOCK_DISPATCH)
cudaError_t launch_conv_block(const ConvBlockParams& p, cudaStream_t stream) {
  if (!conv_block_plan_ok(p)) return cudaErrorInvalidValue;
  switch (p.wdtype) {
    case kF32: return launch_conv_block_as<float>(p, stream);
    case kBF16: return launch_conv_block_as<__nv_bfloat16>(p, stream);
    default: return launch_conv_block_as<double>(p, stream);
  }
}

cudaError_t launch_conv_block_chain(const ConvBlockParams* blocks, int count, int wdtype, unsigned* barrier, int grid,
                                    int ring_bytes, ChainFlags flags, long long* probe, cudaStream_t stream) {
  if (count < 1 || grid < 1 || ring_bytes < 0) return cudaErrorInvalidValue;
  switch (wdtype) {
    case kF32: return launch_conv_block_chain_as<float>(blocks, count, barrier, grid, ring_bytes, flags, probe, stream);
    case kBF16: return launch_conv_block_chain_as<__nv_bfloat16>(blocks, count, barrier, grid, ring_bytes, flags, probe, stream);
    case kF64: return launch_conv_block_chain_as<double>(blocks, count, barrier, grid, ring_bytes, flags, probe, stream);
    default: return cudaErrorInvalidValue;
  }
}
#endif
#endif

}  // namespace dp_fast
