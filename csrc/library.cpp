// The dp_fast operator library: the schema of every torch.ops.dp_fast operator, defined once.
// The device implementations register themselves beside their code (TORCH_LIBRARY_IMPL in
// csrc/scheduler_step.cpp for the CPU, csrc/scheduler_step_cuda.cpp for CUDA); the fake
// (shape-only) implementations used by torch.compile are in dp_fast/_ext.py.
// Kept apart from the Python bindings (csrc/bindings.cpp) so that the C++ tests of the CMake
// build can call the operators through the dispatcher without Python.
#include <torch/library.h>

TORCH_LIBRARY(dp_fast, m) {
  // model_output, sample, noise: same shape, float32/float64; coefs: (8,) float64 on sample's
  // device (row layout in kernels/scheduler_step_math.h). Returns the previous sample.
  m.def(
      "scheduler_step(Tensor model_output, Tensor sample, Tensor coefs, Tensor? noise, "
      "float clip_range) -> Tensor");
  // One fused convolution block of either U-Net (kernels/conv_block.cuh has the formula and the
  // work split; dp_fast/cuda/conv_block.py is the Python front, which plans the tiling). CUDA
  // only. Writes `out` (which may be `sample`: the step is applied in place) and uses `parts`
  // and `counters` as scratch. config: mode, act, channels per group (0: no GroupNorm), nc,
  // t_pad, bb, tpg, region, split, chunks_per_split, res_chunks_per_split, co_tiles, n_tiles,
  // pdl (programmatic dependent launch, sm_90+), prefetch_bytes, staged (1: a staged chain
  // entry, kernels/conv_block.cuh; only conv_block_params takes it), ring (1: the
  // reductions' weights through a ring of cp.async copies in shared memory, kernels/conv_block.cuh).
  // scalars: GroupNorm eps, clip range. head_weight (A, C_out), head_bias (A,): a 1x1
  // convolution after the block (Chi's output conv; out, sample and noise then have A
  // channels), whose shares take parts after the split partials and whose arrivals take
  // counters after the regions'.
  m.def(
      "conv_block(Tensor x, Tensor? x2, Tensor weight, Tensor bias, Tensor? gn_weight, "
      "Tensor? gn_bias, Tensor? cond, Tensor? cond_scale, Tensor? residual, Tensor? res_x2, "
      "Tensor? res_weight, Tensor? res_bias, Tensor? sample, Tensor? noise, Tensor? coefs, "
      "Tensor(a!) out, Tensor(b!) parts, Tensor(c!) counters, int[] config, float[] scalars, "
      "Tensor? head_weight=None, Tensor? head_bias=None) -> ()");
  // conv_block's arguments, checked, as the kernel's parameter bytes (a CPU uint8 tensor) instead
  // of a launch: one entry of a chain. config may have three more integers, the entry's part in
  // the chain's flagged exchange (kernels/conv_block.cuh, ConvBlockParams and ChainFlags):
  // x_from, x2_from, flag_slot. CUDA only.
  m.def(
      "conv_block_params(Tensor x, Tensor? x2, Tensor weight, Tensor bias, Tensor? gn_weight, "
      "Tensor? gn_bias, Tensor? cond, Tensor? cond_scale, Tensor? residual, Tensor? res_x2, "
      "Tensor? res_weight, Tensor? res_bias, Tensor? sample, Tensor? noise, Tensor? coefs, "
      "Tensor out, Tensor parts, Tensor counters, int[] config, float[] scalars, "
      "Tensor? head_weight=None, Tensor? head_bias=None) -> Tensor");
  // The chain: the entries of params (CPU bytes, concatenated; device_params: their copy on the
  // GPU) run one after another by one cooperative launch of `grid` CTAs with grid-wide barriers
  // between them (kernels/conv_block.cuh). barrier: 2 int32 words, scratch (zeros at first).
  // flags: the flagged exchange's int64 words (kernels/conv_block.cuh, ChainFlags; zeros at
  // first), or None for none. probe: int64, at least count x grid x kChainProbeFields values, or
  // None: each CTA's timestamps per entry (kernels/conv_block.cuh, kChainProbeFields). Writes
  // what each entry's out (or sample) names. CUDA only.
  m.def(
      "conv_block_chain(Tensor params, Tensor device_params, Tensor(a!) barrier, int grid, "
      "Tensor(b!)? flags=None, Tensor(c!)? probe=None) -> ()");
}
