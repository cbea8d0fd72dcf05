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
}
