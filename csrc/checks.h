// Input checks shared by the CPU and CUDA implementations of the dp_fast operators, so both
// devices reject the same inputs with the same messages (each names what was expected).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "kernels/scheduler_step_math.h"

namespace dp_fast {

// scheduler_step(model_output, sample, coefs, noise, clip_range): sample float32/float64 on a
// `device_type` device; model_output and noise (when given) shaped, typed and placed like
// sample; coefs float64 of shape (kNumCoefs,) on sample's device; clip_range > 0.
// Contiguity is not checked: the implementations make their inputs contiguous.
inline void check_scheduler_step_inputs(const at::Tensor& model_output, const at::Tensor& sample,
                                        const at::Tensor& coefs,
                                        const std::optional<at::Tensor>& noise, double clip_range,
                                        c10::DeviceType device_type) {
  TORCH_CHECK(sample.scalar_type() == at::kFloat || sample.scalar_type() == at::kDouble,
              "scheduler_step: sample must be float32 or float64, got ", sample.scalar_type());
  const auto check_like_sample = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.sizes() == sample.sizes() && t.scalar_type() == sample.scalar_type() &&
                    t.device() == sample.device(),
                "scheduler_step: ", name, " must match sample (shape ", sample.sizes(), ", ",
                sample.scalar_type(), ", ", sample.device(), "); got shape ", t.sizes(), ", ",
                t.scalar_type(), ", ", t.device());
  };
  check_like_sample(model_output, "model_output");
  if (noise.has_value()) {
    check_like_sample(*noise, "noise");
  }
  TORCH_CHECK(coefs.dim() == 1 && coefs.size(0) == kNumCoefs &&
                  coefs.scalar_type() == at::kDouble && coefs.device() == sample.device(),
              "scheduler_step: coefs must be float64 of shape (", kNumCoefs,
              ",) on sample's device (", sample.device(), "); got shape ", coefs.sizes(), ", ",
              coefs.scalar_type(), ", ", coefs.device());
  // Cannot fail once the tensors agree (the dispatcher chose this kernel for their device);
  // a guard for direct calls, checked last so the messages above name the real mismatch.
  TORCH_CHECK(sample.device().type() == device_type, "scheduler_step: sample must be on a ",
              device_type, " device, got ", sample.device());
  TORCH_CHECK(clip_range > 0, "scheduler_step: clip_range must be > 0 (inf for no clipping), got ",
              clip_range);
}

}  // namespace dp_fast
