// The Python module dp_fast._C. Importing it loads this shared library, whose static
// initialisers register the torch.ops.dp_fast operators (csrc/library.cpp and the
// TORCH_LIBRARY_IMPL blocks); the module itself only reports how it was built.
#include <pybind11/pybind11.h>

#ifdef WITH_CUDA
#include "kernels/conv_block.cuh"
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
#endif
}
