// conv_block on the GPU, host side: the kernel's parameters from the checked tensors
// (csrc/conv_block_params.h), then kernels/conv_block.cu launched on the current stream. The
// tiling (config) is planned in Python (dp_fast/cuda/conv_block.py).
// Compiled only in CUDA builds (WITH_CUDA).
#ifdef WITH_CUDA

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>

#include "csrc/conv_block_params.h"

namespace dp_fast {
namespace {

using OptTensor = std::optional<at::Tensor>;

void conv_block_cuda(const at::Tensor& x, const OptTensor& x2, const at::Tensor& weight,
                     const at::Tensor& bias, const OptTensor& gn_weight, const OptTensor& gn_bias,
                     const OptTensor& cond, const OptTensor& cond_scale, const OptTensor& residual,
                     const OptTensor& res_x2, const OptTensor& res_weight,
                     const OptTensor& res_bias, const OptTensor& sample, const OptTensor& noise,
                     const OptTensor& coefs, const at::Tensor& out, const at::Tensor& parts,
                     const at::Tensor& counters, at::IntArrayRef config,
                     at::ArrayRef<double> scalars) {
  const at::Device device = weight.device();
  TORCH_CHECK(device.is_cuda(), "conv_block: weight must be on a CUDA device, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  const ConvBlockParams p = make_conv_block_params(x, x2, weight, bias, gn_weight, gn_bias, cond,
                                                   cond_scale, residual, res_x2, res_weight, res_bias,
                                                   sample, noise, coefs, out, parts, counters, config,
                                                   scalars);
  const cudaError_t err = launch_conv_block(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "conv_block: launch failed: ", cudaGetErrorString(err),
              " (config ", config, ")");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(dp_fast, CUDA, m) {
  m.impl("conv_block", &conv_block_cuda);
}

}  // namespace dp_fast

#endif  // WITH_CUDA
