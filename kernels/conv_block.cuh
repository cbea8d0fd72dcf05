// Launcher of the fused conv_block CUDA kernel (kernels/conv_block.cu); the host side that checks
// tensors, plans the tiling and picks the stream is csrc/conv_block_cuda.cpp (+ the Python
// wrapper dp_fast/cuda/conv_block.py, which holds the plan).
//
// One launch computes one block of either U-Net, for all batch elements:
//   y   = conv(cat(x, x2), w) + bias        mode 0 same (K odd, stride 1, padding K/2),
//                                           1 down (K=3, stride 2, padding 1), 2 up (transposed,
//                                           K=4, stride 2, padding 1; w packed (C_out, C_in, 4))
//   y   = GroupNorm(y) (if gn), act(y) (0 none, 1 SiLU, 2 Mish), y * scale + cond (FiLM) or y + cond,
//   y  += residual (identity) or rw @ cat(residual, res2) + rb (1x1 conv),
//   y   = hw @ y + hb                       a 1x1 convolution after the block (the "head", hw set:
//                                           Chi's output conv), A = c_head output channels
//   out = y, or the scheduler step of y (kernels/scheduler_step_math.h) when step is set.
// Every activation is addressed through (batch, channel, time) strides, in its own dtype.
//
// Work split (the "plan", chosen on the host): grid (co_tiles, n_tiles, split). A CTA computes
// a tile of kConvRowsPerCta(nc) output channels x nc columns (bb batch elements x t_pad time
// steps) over its split's share of the reduction (C_in * K, plus the 1x1 residual's C_res).
// When a region (a GroupNorm group, or one tile without GroupNorm, times one batch tile) spans
// more than one CTA, each writes its partial sums to `parts` and the last CTA to arrive (an
// atomic counter in `counters`, which it resets to 0) sums them and applies the epilogue.
// Programmatic dependent launch (pdl, sm_90+): a CTA first asks L2 for the start of its weight
// slice (prefetch_bytes, spread over its rows) and, with the weight ring (ring), copies the
// ring's first stages of its weights to shared memory, lets the next launch on the stream start,
// then waits for the previous launch to complete (griddepcontrol.wait) before it reads or writes
// anything else. So the weights must not be written by the launch before (the one immediately
// before: an earlier one has completed when that one starts), and nothing but the weights'
// prefetch and copies may move above the wait.
// With a head, the CTA that finishes a region (the one that holds it, or the last to arrive)
// multiplies the region's rows by the head's columns for them, stores that share of hw @ y to
// head_parts and arrives at its batch tile's counter in head_counters; the last region to arrive
// sums the shares in region order, adds hb, applies the step and writes out (B, A, T_out).
// Assumes: counters zero at launch and not shared with a concurrent launch; weights contiguous.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#if defined(__CUDACC__)
#define DP_FAST_CONSTEXPR_HD __host__ __device__ constexpr
#else
#define DP_FAST_CONSTEXPR_HD constexpr
#endif

namespace dp_fast {

enum ConvDType : int { kF32 = 0, kBF16 = 1, kF64 = 2 };

struct Operand {  // one (B, C, T) activation: pointer, dtype, strides in elements
  const void* ptr = nullptr;
  int dtype = kF32;
  int64_t sb = 0, sc = 0, st = 0;
};

struct ConvBlockParams {
  Operand x, x2;      // inputs: x2 is the skip (channels C1..C_in-1), ptr null when absent
  int c1 = 0;         // channels of x
  const void* w = nullptr;     // (C_out, C_in * K) in wdtype, contiguous
  const void* bias = nullptr;  // (C_out,) in wdtype
  int wdtype = kF32;
  int batch = 0, t_in = 0, t_out = 0, c_out = 0, c_in = 0, k = 1, mode = 0, act = 0;
  const void* gn_w = nullptr;  // (C_out,) in wdtype; null: no GroupNorm
  const void* gn_b = nullptr;
  int cpg = 1;                 // channels per GroupNorm group
  double eps = 1e-5;
  Operand cond, scale;         // (B, C_out): st unused, sc == 1; ptr null when absent
  Operand res, res2;           // identity (res only, rw null) or 1x1 conv inputs
  int cr1 = 0, cr = 0;         // residual channels: of res, total
  const void* rw = nullptr;    // (C_out, cr) in wdtype; null with res set: identity
  const void* rb = nullptr;
  Operand out;                 // written (non-const through out_ptr)
  void* out_ptr = nullptr;
  Operand sample, noise;       // the step's x and noise; sample.ptr null: no step
  const double* coefs = nullptr;
  double clip = 0;
  void* parts = nullptr;       // partial sums (accumulation dtype) when a region spans CTAs
  int* counters = nullptr;
  // The head (null hw: none): hw (c_head, c_out) and hb (c_head,) in wdtype; out, sample and
  // noise then have c_head channels. head_parts: the regions' shares (accumulation dtype,
  // [region][batch tile][a][column]); head_counters: one per batch tile.
  const void* hw = nullptr;
  const void* hb = nullptr;
  void* head_parts = nullptr;
  int* head_counters = nullptr;
  // the plan
  int nc = 16, t_pad = 1, bb = 1, tpg = 1, region = 16, split = 1;
  int chunks_per_split = 1, res_chunks_per_split = 0, co_tiles = 1, n_tiles = 1;
  int pdl = 0;             // launched with programmatic stream serialization (sm_90+)
  int prefetch_bytes = 0;  // of weights each CTA asks L2 for before it waits (0: none)
  int staged = 0;          // a chain entry whose CTAs stage the input (kConvStagedBytes; see below)
  int ring = 0;            // 1: the reductions stream their weights through a ring (see below)
  // The chain's flagged exchange (see below): x_from (x2_from) is 1 + the index of the chain
  // entry whose output x (x2) is, read from that entry's flagged copy; 0: read x (x2) itself.
  // flag_slot: 1 + this entry's index, whose flagged copy of its output it writes too; 0: none.
  int x_from = 0, x2_from = 0, flag_slot = 0;
  int c_head = 0;          // the head's output channels A (0: no head); also keeps the tag's offset a multiple of 8
  // Set by the host over the bytes before it (csrc/conv_block_params.h: a chain entry is run
  // only as conv_block_params made it); the kernels never read it.
  unsigned long long tag = 0;
};

constexpr int kConvThreadsPerCta = 256;
// The widest head the kernels fuse (its shares take c_head * nc values a region).
constexpr int kConvMaxHeadChannels = 32;
// Tiles of at most this many columns (nc 4 or 8: the whole batch at batch 1 and T <= 8) use the
// GEMV reduction (a thread per reduction index, every row's weight at it streamed, rows x
// columns = kConvGemvAccumulators per thread); wider ones (16, 32, 64) the tiled one (warps own
// rows, input columns staged in shared memory).
constexpr int kConvGemvMaxColumns = 8;
constexpr int kConvGemvAccumulators = 64;
// Output channels per CTA for nc columns (the host plans with it).
DP_FAST_CONSTEXPR_HD int kConvRowsPerCta(int nc) {
  return nc <= kConvGemvMaxColumns ? kConvGemvAccumulators / nc : nc == 16 ? 16 : 8;
}
// Reduction values per chunk (the host splits the reduction in whole chunks): one per thread
// in the GEMV reduction.
DP_FAST_CONSTEXPR_HD int kConvChunk(int wdtype, int nc) {
  return nc <= kConvGemvMaxColumns ? kConvThreadsPerCta : wdtype == kF64 ? 64 : 128;
}
// The longest reduction C_in * K (and 1x1 residual C_res) the kernels take: they split a
// reduction index into channel and tap by a multiply-high, exact below 2^32 / K.
constexpr int kConvMaxReduction = 1 << 26;
constexpr int kConvMaxK = 31;
// Bytes per L2 prefetch request (a cache line).
constexpr int kConvPrefetchLineBytes = 128;
// The largest finishing region, rows x columns (two such tiles live in shared memory).
DP_FAST_CONSTEXPR_HD int kConvMaxRegionElements(int wdtype) { return wdtype == kF64 ? 2048 : 4096; }

// The weight ring (ring = 1): the reductions copy their weights to shared memory with cp.async
// (sm_80+; 16 bytes a copy, no registers held while in flight), kConvRingStages stages of one
// chunk (kConvChunk reduction indices) x the tile's rows, so that a CTA has several stages (up to
// 56 KiB) of its slice in flight at once instead of the one or two chunks its registers hold; in
// a launch of its own (not in a chain) the first stages are asked for before the wait for the
// previous launch. Needs every row of the weights (C_in * K values, and
// the 1x1 residual's C_res) to be a whole number of 16-byte pieces (the host checks) and the
// weights 16-byte aligned (the host clears ring where they are not). The ring lives in dynamic
// shared memory (kConvRingSmemBytes).
constexpr int kConvRingBytes = 65536;
constexpr int kConvRingMaxStages = 8;
DP_FAST_CONSTEXPR_HD int kConvElementBytes(int wdtype) { return wdtype == kF64 ? 8 : wdtype == kBF16 ? 2 : 4; }
DP_FAST_CONSTEXPR_HD int kConvRingStageBytes(int wdtype, int nc) {
  return kConvRowsPerCta(nc) * kConvChunk(wdtype, nc) * kConvElementBytes(wdtype);
}
DP_FAST_CONSTEXPR_HD int kConvRingStages(int wdtype, int nc) {
  return kConvRingBytes / kConvRingStageBytes(wdtype, nc) < 2                    ? 2
         : kConvRingBytes / kConvRingStageBytes(wdtype, nc) > kConvRingMaxStages ? kConvRingMaxStages
                                                                               : kConvRingBytes / kConvRingStageBytes(wdtype, nc);
}
// A staged chain entry's ring (staged = 1, ring = 1) is its first tile's weights, region rows of
// C_in * K values, copied whole to shared memory by cp.async between the grid barrier's arrival
// and its wait before the entry, or in a chain without barriers once its CTA is done with the
// entry before (the host keeps them within kConvRingBytes).
DP_FAST_CONSTEXPR_HD int64_t kConvStagedRingBytes(const ConvBlockParams& p) {
  return static_cast<int64_t>(p.region) * p.c_in * p.k * kConvElementBytes(p.wdtype);
}
DP_FAST_CONSTEXPR_HD int kConvRingSmemBytes(const ConvBlockParams& p) {
  return !p.ring     ? 0
         : p.staged ? static_cast<int>(kConvStagedRingBytes(p))
                    : kConvRingStages(p.wdtype, p.nc) * kConvRingStageBytes(p.wdtype, p.nc);
}

// Launches on `stream`; returns the launch's error (cudaSuccess, or e.g. an invalid plan).
cudaError_t launch_conv_block(const ConvBlockParams& p, cudaStream_t stream);

// The chain: a list of blocks (the sampler's: every network evaluation of a sample() call) in
// one cooperative launch, one after another, separated by grid-wide barriers (or, for a chain
// of staged entries with the flagged exchange below, by nothing but their data); each block's
// tiles are spread over the grid's CTAs as its own launch would spread them over its grid. For
// plans of at most kConvChainMaxColumns columns (batch 1 at T <= 16), one weight dtype.
// `blocks`: `count` parameter sets in device memory; `barrier`: a word of device memory (the
// first of the two the operator takes) whose low 31 bits are zero (zeros at first; every launch
// leaves them so), not shared with a concurrent launch. The grid is `grid` CTAs, fewer if the
// device cannot hold them all.
// ring_bytes: the dynamic shared memory, the largest kConvRingSmemBytes of the blocks.
constexpr int kConvChainMaxColumns = 16;
// A staged chain entry (staged = 1; blocks without GroupNorm or a 1x1 residual conv whose whole
// batch fits one tile of nc <= 16 columns: the lesson's U-Net at batch 1): no split of the
// reduction, no partial sums, no arrival counters. Each CTA with a tile copies the block's whole
// input cat(x, x2) into shared memory once (C_in rows of bb * T_in + 1 values, in the
// accumulation type, at most kConvStagedBytes), then takes tiles of `region` output channels
// (co_tiles of them; region * nc <= kConvGemvAccumulators) over the whole reduction, gathering
// the input columns from shared memory. After the grid barrier a block costs one round trip for
// its input instead of the tiled path's chunk loop, partial sums and arrival.
constexpr int kConvStagedBytes = 36864;
DP_FAST_CONSTEXPR_HD int kConvStagedRowLength(int bb, int t_in) { return bb * t_in + 1; }  // odd: fewer bank conflicts
bool conv_block_chain_accepts(const ConvBlockParams& p);  // a plan the chain kernel runs

// The flagged exchange (a chain of staged entries only: the lesson's U-Net at batch 1). A grid
// barrier costs its last CTA a release (waiting for its stores to reach L2) and an atomic, the
// others a poll, and then every CTA a round trip for the input the barrier guarded: three to
// four L2 round trips per block. Instead, each staged entry writes its output a second time as
// flagged values: 64-bit words (value bits, flag) written by one relaxed atomic store (a double
// takes two words, its halves), in its own slot of `flags` (entry j's at slots + j slot_words,
// element (b, c, t) of its (batch, C_out, T_out) output at word (b C_out + c) T_out + t, or
// twice that for doubles); the flag is the launch's number (the launch count, words[0], taken
// mod 2^32 - 1, plus 1: never 0, which the slots hold at first, and never the last launch's).
// An entry whose x (x2) an earlier entry wrote reads it there (x_from, x2_from), each value
// polled until its flag is this launch's: one round trip after the value is stored, and no
// barrier. Where every entry is staged and every input an earlier entry wrote is read so
// (check_conv_block_chain), the chain has no grid barrier at all (barrier_free): each staged
// consumer reads its producer's whole output, so a CTA that has its input has every CTA done
// with the entries before, and nothing is written twice in a launch (a slot per entry; an
// in-place step's sample is read and written by the same CTA). The flag needs no fence: the
// value travels in the word that carries it (the protocol of NCCL's LL, "low latency", with
// 64-bit words). The CTA that finishes last counts the launch (words[1]: CTAs done, reset).
// Words per flagged element of an activation of `dtype`: a double's two halves take one each.
DP_FAST_CONSTEXPR_HD int kFlaggedWords(int dtype) { return dtype == kF64 ? 2 : 1; }
struct ChainFlags {
  unsigned* words = nullptr;              // [0] launches, [1] CTAs done; null: no flagged exchange
  unsigned long long* slots = nullptr;    // count slots of slot_words words each
  long long slot_words = 0;
  int barrier_free = 0;                   // 1: no grid barrier between the entries
};
// The chain's probe (probe non-null; bench/diag/probe.py): thread 0 of every CTA writes, for
// every entry, kChainProbeFields int64 values at probe + (entry * gridDim.x + CTA) *
// kChainProbeFields: the GPU's global timer (ns) at the entry's start and at its release, the
// SM's cycle counter at its start, after its tiles (a staged entry: its staging and tiles),
// after its arrival at the grid barrier (issued; the last entry, and a barrier-free chain's:
// after its tiles) and at its release (the barrier's wait done; the last entry: its end), the
// SM's number, and gridDim.x << 32 | staged << 31 | the tiles the CTA ran. The probe needs
// count * grid * kChainProbeFields values (the launch may run fewer CTAs than grid; rows it does
// not run are left as they were).
constexpr int kChainProbeFields = 8;
cudaError_t launch_conv_block_chain(const ConvBlockParams* blocks, int count, int wdtype, unsigned* barrier, int grid,
                                    int ring_bytes, ChainFlags flags, long long* probe, cudaStream_t stream);

}  // namespace dp_fast
