// The Python module dp_fast._C. Importing it loads this shared library, whose static
// initialisers register the torch.ops.dp_fast operators (csrc/library.cpp and the
// TORCH_LIBRARY_IMPL blocks); the module itself only reports how it was built.
#include <pybind11/pybind11.h>

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/conv_block.cuh"
#include "kernels/scheduler_step.cuh"
#endif

namespace {

constexpr bool kCudaCompiled =
#ifdef WITH_CUDA
    true;
#else
    false;
#endif

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "dp_fast compiled operators (registered as torch.ops.dp_fast.*)";
  m.def("cuda_compiled", [] { return kCudaCompiled; },
        "True when this build contains the CUDA kernels (kernels/*.cu).");
#ifdef WITH_CUDA
  m.def("conv_block_params_bytes", [] { return static_cast<int>(sizeof(dp_fast::ConvBlockParams)); },
        "Bytes of one entry of torch.ops.dp_fast.conv_block_params (a chain entry).");
  m.def(
      "kernel_image",
      [](int device) {
        const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
        int binary = 0, ptx = 0;
        const cudaError_t err = dp_fast::kernel_image_versions(&binary, &ptx);
        if (err != cudaSuccess) {
          throw std::runtime_error(std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
        }
        return std::make_pair(binary, ptx);
      },
      "(SASS, PTX) compute capability (major * 10 + minor) of this build's kernels for CUDA device "
      "`device`; RuntimeError naming the CUDA error where none of its code runs there.");
#endif
}
