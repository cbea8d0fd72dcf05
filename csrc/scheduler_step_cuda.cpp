// scheduler_step on the GPU, host side: checks the inputs, picks the current stream and
// launches the kernel of kernels/scheduler_step.cu (which holds the formula and its layouts).
// Compiled only in CUDA builds (WITH_CUDA).
//
// Layouts: model_output, sample, noise: CUDA tensors of one shape, made contiguous here;
// coefs: (8,) float64 on the same GPU -- the kernel reads it from device memory, so nothing
// here touches its values and the op never synchronises with the host (graph-capturable).
// Assumes: float32 or float64; noise None with a nonzero sigma cannot be detected without a
// sync, so the kernel writes NaN for that step instead of raising.
#ifdef WITH_CUDA

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: that needs cuBLAS/cuSPARSE headers
#include <torch/library.h>

#include <optional>

#include "csrc/checks.h"
#include "kernels/scheduler_step.cuh"

namespace dp_fast {
namespace {

at::Tensor scheduler_step_cuda(const at::Tensor& model_output, const at::Tensor& sample,
                               const at::Tensor& coefs, const std::optional<at::Tensor>& noise,
                               double clip_range) {
  check_scheduler_step_inputs(model_output, sample, coefs, noise, clip_range,
                              c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard device_guard(sample.device());
  const at::Tensor coefs_c = coefs.contiguous();
  const at::Tensor m = model_output.contiguous();
  const at::Tensor x = sample.contiguous();
  const std::optional<at::Tensor> z =
      noise.has_value() ? std::optional<at::Tensor>(noise->contiguous()) : std::nullopt;
  at::Tensor out = x.new_empty(x.sizes());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scheduler_step_cuda", [&] {
    launch_scheduler_step<scalar_t>(
        m.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        coefs_c.const_data_ptr<double>(),
        z.has_value() ? z->const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(),
        x.numel(), clip_range, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dp_fast, CUDA, m) {
  m.impl("scheduler_step", &scheduler_step_cuda);
}

}  // namespace dp_fast

#endif  // WITH_CUDA
