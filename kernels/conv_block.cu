// The fused conv_block on the GPU (contract and work split: kernels/conv_block.cuh).
//
// A CTA of 256 threads (8 warps) owns kConvRowsPerCta(NC) output channels and NC columns, and
// walks its share of the reduction index r = ci * K + k in chunks of kChunk:
//   1. the chunk's input columns (an implicit im2col: cols[r][n] = x[b, ci, src(t, k)], x or the
//      skip x2 by ci, zero outside the sequence) are gathered into shared memory (loaded into
//      registers one chunk ahead, like the weights);
//   2. each warp owns RPW rows; lane l reads the weights w[co, r0 + l + 32 j] (coalesced 128-byte
//      rows per warp; the next chunk's are loaded before this chunk's arithmetic), so every
//      weight is read from memory exactly once per launch;
//   3. acc[row][n] += w * cols[r][n] in registers (cols rows are padded: no bank conflicts);
// then the 32 lanes' partial sums are added with shuffles. A region held by one CTA is finished
// at once; otherwise partials go to `parts` and the last CTA to arrive finishes the region.
// The epilogue (bias, GroupNorm with two-pass statistics per batch element, activation, FiLM,
// residual, scheduler step) runs on a shared-memory tile, one thread per element.
#include "kernels/conv_block.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/scheduler_step_math.h"

namespace dp_fast {
namespace {

constexpr int kThreads = 256;
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

// Which input element feeds output time t through tap k; -1 outside the sequence.
__device__ __forceinline__ int source_index(int mode, int t, int k, int K, int t_in) {
  int s;
  if (mode == 0) {
    s = t + k - K / 2;
  } else if (mode == 1) {
    s = 2 * t + k - 1;
  } else {
    const int num = t + 1 - k;  // transposed: t = 2 s - 1 + k
    if (num < 0 || (num & 1)) return -1;
    s = num >> 1;
  }
  return (s >= 0 && s < t_in) ? s : -1;
}

// One reduction (the convolution, or the 1x1 residual with K = 1, mode 0) over r in
// [r_lo, r_hi) into acc; cols: shared (kChunk, NC + 1) scratch.
template <typename W, int NC>
__device__ void reduce(typename AccOf<W>::type (&acc)[kConvRowsPerCta(NC) / kWarps][NC],
                       const W* __restrict__ w, int w_row, int r_lo, int r_hi, const Operand& a,
                       const Operand& a2, int c1, int K, int mode, int t_in, int row0, int row_end,
                       int t_pad, int b0, int batch, int t_out,
                       typename AccOf<W>::type (*cols)[NC + 1]) {
  using A = typename AccOf<W>::type;
  constexpr int RPW = kConvRowsPerCta(NC) / kWarps;
  constexpr int kChunk = sizeof(A) == 8 ? 64 : 128;
  constexpr int kPerLane = kChunk / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  A wv[RPW][kPerLane], wn[RPW][kPerLane];  // converted on load: bfloat16 weights to float
  auto load_w = [&](A (&dst)[RPW][kPerLane], int r0) {
#pragma unroll
    for (int i = 0; i < RPW; ++i) {
      const int co = row0 + warp * RPW + i;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int r = r0 + lane + 32 * j;
        dst[i][j] = (co < row_end && r < r_hi) ? static_cast<A>(to_f(w[static_cast<int64_t>(co) * w_row + r])) : A(0);
      }
    }
  };
  // The chunk's input columns, gathered into registers one chunk ahead (all loads independent,
  // in flight together), then stored to shared memory.
  constexpr int kGather = kChunk * NC / kThreads;
  A gv[kGather];
  auto gather = [&](int r0) {
#pragma unroll
    for (int q = 0; q < kGather; ++q) {
      const int e = threadIdx.x + q * kThreads;
      const int rr = e / NC, n = e % NC, r = r0 + rr;
      const int t = n % t_pad, b = b0 + n / t_pad;
      A v = A(0);
      if (r < r_hi && t < t_out && b < batch) {
        const int ci = r / K, k = r - ci * K;
        const int s = source_index(mode, t, k, K, t_in);
        if (s >= 0) {
          v = ci < c1 ? load_act<A>(a.ptr, a.dtype, b * a.sb + ci * a.sc + s * a.st)
                      : load_act<A>(a2.ptr, a2.dtype, b * a2.sb + (ci - c1) * a2.sc + s * a2.st);
        }
      }
      gv[q] = v;
    }
  };
  if (r_lo < r_hi) {
    load_w(wn, r_lo);
    gather(r_lo);
  }
  for (int r0 = r_lo; r0 < r_hi; r0 += kChunk) {
#pragma unroll
    for (int i = 0; i < RPW; ++i)
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) wv[i][j] = wn[i][j];
    __syncthreads();  // the previous chunk's columns are consumed
#pragma unroll
    for (int q = 0; q < kGather; ++q) {
      const int e = threadIdx.x + q * kThreads;
      cols[e / NC][e % NC] = gv[q];
    }
    if (r0 + kChunk < r_hi) {  // the next chunk's weights and columns: in flight during this chunk's math
      load_w(wn, r0 + kChunk);
      gather(r0 + kChunk);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const A* col = cols[lane + 32 * j];
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        const A xv = col[n];
#pragma unroll
        for (int i = 0; i < RPW; ++i) acc[i][n] += wv[i][j] * xv;
      }
    }
  }
}

// The 32 lanes' partial sums of every (row, column), written to tile[warp row][n] by lane 0.
template <typename A, int NC, int RPW>
__device__ void warp_sum_to_tile(A (&acc)[RPW][NC], A* tile) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < RPW; ++i)
#pragma unroll
    for (int n = 0; n < NC; ++n) {
      A v = acc[i][n];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) tile[(warp * RPW + i) * NC + n] = v;
    }
}

// Bias .. step on a (rows, NC) tile of y (and ry, the 1x1 residual) in shared memory; rows map
// to channels row_first + row, valid below row_len. red: kThreads + 2 * 16 + NC scratch.
template <typename W, int NC>
__device__ void epilogue(const ConvBlockParams& p, typename AccOf<W>::type* y,
                         const typename AccOf<W>::type* ry, int rows, int row_first, int row_len,
                         int b0, typename AccOf<W>::type* red) {
  using A = typename AccOf<W>::type;
  const W* bias = static_cast<const W*>(p.bias);
  const int total = rows * NC;
  auto channel = [&](int row) { return row_first + row; };
  auto valid = [&](int row, int n) {
    const int co = channel(row), t = n % p.t_pad, b = b0 + n / p.t_pad;
    return row < row_len && co < p.c_out && t < p.t_out && b < p.batch;
  };
  if (p.gn_w != nullptr) {
    // Two-pass statistics per batch element of the tile, over (the group's channels, T_out).
    // Thread e takes column e % NC for every row e / NC + k * (kThreads / NC).
    A* colsum = red + kThreads;  // NC
    A* stat = colsum + NC;       // 2 * 16: mean, rstd per batch element (bb <= 16)
    const int n = threadIdx.x % NC;
    for (int pass = 0; pass < 2; ++pass) {
      A s = A(0);
      for (int e = threadIdx.x; e < total; e += kThreads) {
        const int row = e / NC;
        if (valid(row, n)) {
          const A v = y[e] + static_cast<A>(to_f(bias[channel(row)]));
          const A d = pass == 0 ? v : v - stat[n / p.t_pad];
          s += pass == 0 ? d : d * d;
        }
      }
      red[threadIdx.x] = s;
      __syncthreads();
      if (threadIdx.x < NC) {
        A c = A(0);
        for (int j = threadIdx.x; j < kThreads; j += NC) c += red[j];
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
  const StepCoefs<A> coefs = p.sample.ptr != nullptr ? StepCoefs<A>::load(p.coefs) : StepCoefs<A>{};
  for (int e = threadIdx.x; e < total; e += kThreads) {
    const int row = e / NC, n = e % NC;
    if (!valid(row, n)) continue;
    const int co = channel(row), t = n % p.t_pad, b = b0 + n / p.t_pad;
    A v = y[e] + static_cast<A>(to_f(bias[co]));
    if (p.gn_w != nullptr) {
      const int bl = n / p.t_pad;
      v = (v - red[kThreads + NC + bl]) * red[kThreads + NC + 16 + bl];
      v = v * static_cast<A>(to_f(static_cast<const W*>(p.gn_w)[co])) + static_cast<A>(to_f(static_cast<const W*>(p.gn_b)[co]));
    }
    if (p.act == 1) v = silu(v);
    else if (p.act == 2) v = mish(v);
    if (p.scale.ptr != nullptr) v *= load_act<A>(p.scale.ptr, p.scale.dtype, b * p.scale.sb + co);
    if (p.cond.ptr != nullptr) v += load_act<A>(p.cond.ptr, p.cond.dtype, b * p.cond.sb + co);
    if (p.res.ptr != nullptr) {
      if (p.rw == nullptr) {
        v += load_act<A>(p.res.ptr, p.res.dtype, b * p.res.sb + co * p.res.sc + t * p.res.st);
      } else {
        v += ry[e] + static_cast<A>(to_f(static_cast<const W*>(p.rb)[co]));
      }
    }
    if (p.sample.ptr != nullptr) {
      const A xs = load_act<A>(p.sample.ptr, p.sample.dtype, b * p.sample.sb + co * p.sample.sc + t * p.sample.st);
      const A z = p.noise.ptr != nullptr
                      ? load_act<A>(p.noise.ptr, p.noise.dtype, b * p.noise.sb + co * p.noise.sc + t * p.noise.st)
                      : A(0);
      v = scheduler_step_element<A>(coefs, v, xs, z, static_cast<A>(p.clip));
    }
    store_act<A>(p.out_ptr, p.out.dtype, b * p.out.sb + co * p.out.sc + t * p.out.st, v);
  }
}

template <typename W, int NC>
__global__ void __launch_bounds__(kThreads) conv_block_kernel(const __grid_constant__ ConvBlockParams p) {
  using A = typename AccOf<W>::type;
  constexpr int ROWS = kConvRowsPerCta(NC);
  constexpr int RPW = ROWS / kWarps;
  constexpr int kChunk = sizeof(A) == 8 ? 64 : 128;
  // cols (im2col chunk) and, after the reductions, the finishing tiles share this space.
  constexpr int kColsBytes = kChunk * (NC + 1) * sizeof(A);
  constexpr int kTileElements = kConvMaxRegionElements(sizeof(A) == 8 ? kF64 : kF32);
  constexpr int kTileBytes = 2 * kTileElements * sizeof(A);
  __shared__ __align__(16) unsigned char smem[kColsBytes > kTileBytes ? kColsBytes : kTileBytes];
  __shared__ A red[kThreads + 64 + NC];
  __shared__ int last;

  const int pid_c = blockIdx.x, pid_n = blockIdx.y, split = blockIdx.z;
  int g, row0, row_end, region_first, region_len;
  if (p.gn_w != nullptr) {
    g = pid_c / p.tpg;
    row0 = g * p.cpg + (pid_c % p.tpg) * ROWS;
    row_end = min((g + 1) * p.cpg, p.c_out);
    region_first = g * p.cpg;
    region_len = p.cpg;
  } else {
    g = pid_c;
    row0 = pid_c * ROWS;
    row_end = p.c_out;
    region_first = row0;
    region_len = ROWS;
  }
  const int b0 = pid_n * p.bb;
  auto cols = reinterpret_cast<A(*)[NC + 1]>(smem);
  const W* w = static_cast<const W*>(p.w);

  A acc[RPW][NC], racc[RPW][NC];
#pragma unroll
  for (int i = 0; i < RPW; ++i)
#pragma unroll
    for (int n = 0; n < NC; ++n) acc[i][n] = racc[i][n] = A(0);

  const int R = p.c_in * p.k;
  const int r_lo = split * p.chunks_per_split * kChunk;
  reduce<W, NC>(acc, w, R, r_lo, min(r_lo + p.chunks_per_split * kChunk, R), p.x, p.x2, p.c1, p.k,
                p.mode, p.t_in, row0, row_end, p.t_pad, b0, p.batch, p.t_out, cols);
  const bool res_conv = p.res.ptr != nullptr && p.rw != nullptr;
  if (res_conv) {
    const int q_lo = split * p.res_chunks_per_split * kChunk;
    reduce<W, NC>(racc, static_cast<const W*>(p.rw), p.cr, q_lo,
                  min(q_lo + p.res_chunks_per_split * kChunk, p.cr), p.res, p.res2, p.cr1, 1, 0,
                  p.t_out, row0, row_end, p.t_pad, b0, p.batch, p.t_out, cols);
  }
  __syncthreads();  // cols are dead: the tiles reuse the space
  A* tile = reinterpret_cast<A*>(smem);
  A* rtile = tile + kTileElements;

  if (p.tpg * p.split == 1) {
    warp_sum_to_tile<A, NC, RPW>(acc, tile);
    if (res_conv) warp_sum_to_tile<A, NC, RPW>(racc, rtile);
    __syncthreads();
    epilogue<W, NC>(p, tile, rtile, ROWS, row0, p.gn_w != nullptr ? row_end - row0 : ROWS, b0, red);
    return;
  }

  // Partials to parts[slot][split][pid_n][co][n]; the last CTA of the region finishes it.
  A* parts = static_cast<A*>(p.parts);
  const int64_t slot = static_cast<int64_t>(p.split) * p.n_tiles * p.c_out * NC;
  warp_sum_to_tile<A, NC, RPW>(acc, tile);
  if (res_conv) warp_sum_to_tile<A, NC, RPW>(racc, rtile);
  __syncthreads();
  for (int e = threadIdx.x; e < ROWS * NC; e += kThreads) {
    const int co = row0 + e / NC;
    if (co < row_end) {
      const int64_t at = ((static_cast<int64_t>(split) * p.n_tiles + pid_n) * p.c_out + co) * NC + e % NC;
      parts[at] = tile[e];
      if (res_conv) parts[slot + at] = rtile[e];
    }
  }
  __threadfence();  // this thread's partials are visible device-wide before the arrival below
  __syncthreads();
  int* counter = p.counters + pid_n * (p.co_tiles / p.tpg) + g;
  if (threadIdx.x == 0) {
    const int arrived = atomicAdd(counter, 1);
    last = arrived == p.tpg * p.split - 1;
    if (last) *counter = 0;  // every CTA of the region has arrived: ready for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int rows = p.region;
  for (int e = threadIdx.x; e < rows * NC; e += kThreads) {
    const int row = e / NC, co = region_first + row;
    A s = A(0), rs = A(0);
    if (row < region_len && co < p.c_out) {
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
}

template <typename W>
cudaError_t launch_for(const ConvBlockParams& p, cudaStream_t stream) {
  const dim3 grid(p.co_tiles, p.n_tiles, p.split);
  switch (p.nc) {
    case 16: conv_block_kernel<W, 16><<<grid, kThreads, 0, stream>>>(p); break;
    case 32: conv_block_kernel<W, 32><<<grid, kThreads, 0, stream>>>(p); break;
    case 64: conv_block_kernel<W, 64><<<grid, kThreads, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv_block(const ConvBlockParams& p, cudaStream_t stream) {
  if (p.region * p.nc > kConvMaxRegionElements(p.wdtype) || p.nc % p.t_pad != 0 || p.bb * p.t_pad != p.nc) {
    return cudaErrorInvalidValue;
  }
  switch (p.wdtype) {
    case kF32: return launch_for<float>(p, stream);
    case kBF16: return launch_for<__nv_bfloat16>(p, stream);
    case kF64: return launch_for<double>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace dp_fast
