// scheduler_step on the CPU: one DDIM/DDPM update of an action chunk from a coefficient row,
//   x0   = clamp(a_x*x + a_m*m, -clip_range, clip_range)
//   eps  = b_x*x + b_m*m
//   prev = c_x0*x0 + c_eps*eps + c_x*x + sigma*noise
// (per element; the formula and coefficient order are in kernels/scheduler_step_math.h, the
// Python twin is dp_fast.ops.scheduler_step.scheduler_step_ref).
//
// Layouts: model_output (m), sample (x), noise: any shape, all the same; made contiguous here.
// coefs: (8,) float64 on the CPU. Returns a new contiguous tensor shaped and typed like sample.
// Assumes: float32 (math in float) or float64 (math in double); noise may be None only when
// sigma == 0 (checked: the coefficients are on the host here).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <optional>

#include "csrc/checks.h"
#include "kernels/scheduler_step_math.h"

namespace dp_fast {
namespace {

// Below this many elements per chunk at::parallel_for stays on one thread; action chunks
// (batch x horizon x action_dim) are usually far smaller.
constexpr int64_t kParallelGrain = 32768;

at::Tensor scheduler_step_cpu(const at::Tensor& model_output, const at::Tensor& sample,
                              const at::Tensor& coefs, const std::optional<at::Tensor>& noise,
                              double clip_range) {
  check_scheduler_step_inputs(model_output, sample, coefs, noise, clip_range,
                              c10::DeviceType::CPU);
  const at::Tensor coefs_c = coefs.contiguous();
  const double* row = coefs_c.const_data_ptr<double>();
  TORCH_CHECK(row[kCoefNoiseStd] == 0.0 || noise.has_value(),
              "scheduler_step: this step adds noise (sigma != 0) but noise is None");

  const at::Tensor m = model_output.contiguous();
  const at::Tensor x = sample.contiguous();
  const std::optional<at::Tensor> z =
      noise.has_value() ? std::optional<at::Tensor>(noise->contiguous()) : std::nullopt;
  at::Tensor out = x.new_empty(x.sizes());
  const int64_t n = x.numel();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "scheduler_step_cpu", [&] {
    const StepCoefs<scalar_t> c = StepCoefs<scalar_t>::load(row);
    const scalar_t clip = static_cast<scalar_t>(clip_range);
    const scalar_t* m_ptr = m.const_data_ptr<scalar_t>();
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const scalar_t* z_ptr = z.has_value() ? z->const_data_ptr<scalar_t>() : nullptr;
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t noise_value = z_ptr != nullptr ? z_ptr[i] : scalar_t(0);
        out_ptr[i] = scheduler_step_element(c, m_ptr[i], x_ptr[i], noise_value, clip);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dp_fast, CPU, m) {
  m.impl("scheduler_step", &scheduler_step_cpu);
}

}  // namespace dp_fast
