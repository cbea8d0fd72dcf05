// scheduler_step on the GPU: one elementwise pass over an action chunk (the formula is in
// scheduler_step_math.h):
//   out[i] = c_x0 * clamp(a_x*x[i] + a_m*m[i]) + c_eps * (b_x*x[i] + b_m*m[i]) + c_x*x[i]
//            + sigma * noise[i]
//
// Layouts: m (model_output), x (sample), noise, out: contiguous, n elements of scalar_t;
// coefs: 8 float64 in device memory, read by every thread (a broadcast from L1), never by
// the host, so the launch needs no synchronisation and is graph-capturable.
// Assumes: scalar_t is float (math in float) or double (math in double); noise == nullptr
// only when sigma == 0, otherwise every output is NaN (a loud failure that needs no sync).
// Launch errors are checked by the caller (C10_CUDA_KERNEL_LAUNCH_CHECK after this returns).
#include "kernels/scheduler_step.cuh"

#include <cuda_runtime.h>

#include <cmath>  // NAN

#include "kernels/scheduler_step_math.h"

namespace dp_fast {
namespace {

// A memory-bound elementwise op: 256 threads a block and a grid capped at a few waves of an
// H100 (132 SMs x 8 resident blocks); the grid-stride loop covers anything larger.
constexpr int kBlockSize = 256;
constexpr int64_t kMaxGridBlocks = 1024;

template <typename scalar_t, bool kHasNoise>
__global__ void __launch_bounds__(kBlockSize)
    scheduler_step_kernel(const scalar_t* __restrict__ model_output,
                          const scalar_t* __restrict__ sample, const double* __restrict__ coefs,
                          const scalar_t* __restrict__ noise, scalar_t* __restrict__ out,
                          int64_t n, scalar_t clip_range) {
  const StepCoefs<scalar_t> c = StepCoefs<scalar_t>::load(coefs);
  // Without noise a nonzero sigma is a caller error (see header); poison rather than guess.
  const bool missing_noise = !kHasNoise && c.sigma != scalar_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const scalar_t noise_value = kHasNoise ? noise[i] : scalar_t(0);
    const scalar_t prev =
        scheduler_step_element(c, model_output[i], sample[i], noise_value, clip_range);
    out[i] = missing_noise ? static_cast<scalar_t>(NAN) : prev;
  }
}

}  // namespace

template <typename scalar_t>
void launch_scheduler_step(const scalar_t* model_output, const scalar_t* sample,
                           const double* coefs, const scalar_t* noise, scalar_t* out, int64_t n,
                           double clip_range, cudaStream_t stream) {
  if (n == 0) {
    return;
  }
  const int64_t blocks_needed = (n + kBlockSize - 1) / kBlockSize;
  const int grid =
      static_cast<int>(blocks_needed < kMaxGridBlocks ? blocks_needed : kMaxGridBlocks);
  const scalar_t clip = static_cast<scalar_t>(clip_range);
  if (noise != nullptr) {
    scheduler_step_kernel<scalar_t, true>
        <<<grid, kBlockSize, 0, stream>>>(model_output, sample, coefs, noise, out, n, clip);
  } else {
    scheduler_step_kernel<scalar_t, false>
        <<<grid, kBlockSize, 0, stream>>>(model_output, sample, coefs, noise, out, n, clip);
  }
}

cudaError_t kernel_image_versions(int* binary_version, int* ptx_version) {
  cudaFuncAttributes attributes;
  const cudaError_t err = cudaFuncGetAttributes(&attributes, scheduler_step_kernel<float, false>);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // the query's error is not left for the next launch's check to find
    return err;
  }
  *binary_version = attributes.binaryVersion;
  *ptx_version = attributes.ptxVersion;
  return cudaSuccess;
}

template void launch_scheduler_step<float>(const float*, const float*, const double*,
                                           const float*, float*, int64_t, double, cudaStream_t);
template void launch_scheduler_step<double>(const double*, const double*, const double*,
                                            const double*, double*, int64_t, double,
                                            cudaStream_t);

}  // namespace dp_fast
