// conv_block on the GPU, host side: the kernel's parameters from the checked tensors
// (csrc/conv_block_params.h), then kernels/conv_block.cu launched on the current stream; and the
// chain (a list of such parameters run by one cooperative launch). The tiling (config) is
// planned in Python (dp_fast/cuda/conv_block.py).
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
                     at::ArrayRef<double> scalars, const OptTensor& head_weight, const OptTensor& head_bias) {
  const at::Device device = weight.device();
  TORCH_CHECK(device.is_cuda(), "conv_block: weight must be on a CUDA device, got ", device);
  const c10::cuda::CUDAGuard guard(device);
  const ConvBlockParams p = make_conv_block_params(x, x2, weight, bias, gn_weight, gn_bias, cond,
                                                   cond_scale, residual, res_x2, res_weight, res_bias,
                                                   sample, noise, coefs, out, parts, counters, config,
                                                   scalars, head_weight, head_bias);
  TORCH_CHECK(!p.staged, "conv_block: a staged plan (config[15] = 1) runs only as an entry of conv_block_chain");
  const cudaError_t err = launch_conv_block(p, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "conv_block: launch failed: ", cudaGetErrorString(err),
              " (config ", config, ")");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The kernel's parameters for one call (checked as conv_block checks them), as bytes: one entry
// of a chain (conv_block_chain). The tensors' memory must outlive every launch of the chain.
at::Tensor conv_block_params_cuda(const at::Tensor& x, const OptTensor& x2, const at::Tensor& weight,
                                  const at::Tensor& bias, const OptTensor& gn_weight, const OptTensor& gn_bias,
                                  const OptTensor& cond, const OptTensor& cond_scale, const OptTensor& residual,
                                  const OptTensor& res_x2, const OptTensor& res_weight, const OptTensor& res_bias,
                                  const OptTensor& sample, const OptTensor& noise, const OptTensor& coefs,
                                  const at::Tensor& out, const at::Tensor& parts, const at::Tensor& counters,
                                  at::IntArrayRef config, at::ArrayRef<double> scalars, const OptTensor& head_weight,
                                  const OptTensor& head_bias) {
  TORCH_CHECK(weight.device().is_cuda(), "conv_block_params: weight must be on a CUDA device, got ", weight.device());
  const ConvBlockParams p = make_conv_block_params(x, x2, weight, bias, gn_weight, gn_bias, cond, cond_scale, residual,
                                                   res_x2, res_weight, res_bias, sample, noise, coefs, out, parts,
                                                   counters, config, scalars, head_weight, head_bias);
  return conv_block_params_bytes(p);
}

void conv_block_chain_cuda(const at::Tensor& params, const at::Tensor& device_params, const at::Tensor& barrier,
                           int64_t grid, const OptTensor& flags, const OptTensor& probe) {
  const ChainCheck chain = check_conv_block_chain(params, device_params, barrier, grid, flags, probe);
  TORCH_CHECK(device_params.is_cuda() && barrier.device() == device_params.device(),
              "conv_block_chain: device_params and barrier must be on one CUDA device, got ", device_params.device(),
              " and ", barrier.device());
  const c10::cuda::CUDAGuard guard(device_params.device());
  const cudaError_t err = launch_conv_block_chain(static_cast<const ConvBlockParams*>(device_params.data_ptr()),
                                                  chain.count, chain.wdtype,
                                                  static_cast<unsigned*>(barrier.data_ptr()), static_cast<int>(grid),
                                                  chain.ring_bytes, chain.flags, chain.probe,
                                                  c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "conv_block_chain: launch failed: ", cudaGetErrorString(err), " (", chain.count,
              " blocks, grid ", grid, ")");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(dp_fast, CUDA, m) {
  m.impl("conv_block", &conv_block_cuda);
  m.impl("conv_block_params", &conv_block_params_cuda);
  m.impl("conv_block_chain", &conv_block_chain_cuda);
}

}  // namespace dp_fast

#endif  // WITH_CUDA
