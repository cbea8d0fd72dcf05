// Launcher of the scheduler_step CUDA kernel (kernels/scheduler_step.cu); the host side that
// checks tensors and picks the stream is csrc/scheduler_step_cuda.cpp.
//
// Layouts: model_output, sample, noise and out are contiguous arrays of n scalar_t on the
// current device; coefs is one contiguous float64 row of kNumCoefs (scheduler_step_math.h),
// also in device memory, so a launch never reads the host and can be captured in a CUDA graph.
// Assumes: scalar_t is float or double; noise may be nullptr, in which case the step must have
// sigma == 0 -- the kernel cannot raise without a host sync, so it writes NaN instead.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace dp_fast {

template <typename scalar_t>
void launch_scheduler_step(const scalar_t* model_output, const scalar_t* sample,
                           const double* coefs, const scalar_t* noise, scalar_t* out, int64_t n,
                           double clip_range, cudaStream_t stream);

// What code this build has for the current device, as cudaFuncGetAttributes reports it for one
// of its kernels (every .cu file is compiled for the same targets, TORCH_CUDA_ARCH_LIST): the
// SASS's and the PTX's compute capability (major * 10 + minor), or the error where none of it
// runs there (cudaErrorNoKernelImageForDevice, say: a GPU newer or older than the targets).
cudaError_t kernel_image_versions(int* binary_version, int* ptx_version);

}  // namespace dp_fast
