// C++ test of the CPU scheduler_step operator, called through the dispatcher as Python calls it
// (torch.ops.dp_fast.scheduler_step), against a scalar double loop written from the definition:
//   x0 = clamp(a_x*x + a_m*m, -clip, clip); eps = b_x*x + b_m*m;
//   prev = c_x0*x0 + c_eps*eps + c_x*x + sigma*noise
// Inputs are random (never zeros) over several shapes, float32/float64, clip on/off, noise
// on/off; bad inputs must raise a c10::Error naming what was expected. Exits 1 on any failure.
// Built and run by CMake (ctest); needs no Python.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using StepFn = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const std::optional<at::Tensor>&, double);

// The row layout (COEF_* in dp_fast/ops/scheduler_step.py), written out again here on purpose:
// c[0..7] = a_x, a_m, b_x, b_m, c_x0, c_eps, c_x, sigma.
constexpr int kNumCoefs = 8;
constexpr int kSigma = 7;

int g_failures = 0;

void fail(const std::string& what) {
  std::fprintf(stderr, "FAIL %s\n", what.c_str());
  ++g_failures;
}

c10::TypedOperatorHandle<StepFn> step_op() {
  return c10::Dispatcher::singleton()
      .findSchemaOrThrow("dp_fast::scheduler_step", "")
      .typed<StepFn>();
}

// Largest |op - exact| divided by its rounding bound (tol * magnitude of all products summed);
// <= 1 passes.
double worst_error_ratio(const at::Tensor& out, const at::Tensor& m, const at::Tensor& x,
                         const std::vector<double>& c, const std::optional<at::Tensor>& noise,
                         double clip, double tol) {
  const at::Tensor od = out.to(at::kDouble).contiguous();
  const at::Tensor md = m.to(at::kDouble).contiguous();
  const at::Tensor xd = x.to(at::kDouble).contiguous();
  const at::Tensor zd = noise ? noise->to(at::kDouble).contiguous() : at::zeros_like(xd);
  const double *o = od.const_data_ptr<double>(), *mp = md.const_data_ptr<double>(),
               *xp = xd.const_data_ptr<double>(), *zp = zd.const_data_ptr<double>();
  double worst = 0.0;
  for (int64_t i = 0; i < xd.numel(); ++i) {
    const double x0 = std::clamp(c[0] * xp[i] + c[1] * mp[i], -clip, clip);
    const double eps = c[2] * xp[i] + c[3] * mp[i];
    const double prev = c[4] * x0 + c[5] * eps + c[6] * xp[i] + c[7] * zp[i];
    const double scale = std::abs(c[4]) * (std::abs(c[0] * xp[i]) + std::abs(c[1] * mp[i])) +
                         std::abs(c[5]) * (std::abs(c[2] * xp[i]) + std::abs(c[3] * mp[i])) +
                         std::abs(c[6] * xp[i]) + std::abs(c[7] * zp[i]);
    const double ratio = std::abs(o[i] - prev) / (tol * (scale + 1.0));
    worst = std::isnan(ratio) ? std::numeric_limits<double>::infinity() : std::max(worst, ratio);
  }
  return worst;
}

void test_matches_double_loop() {
  const auto op = step_op();
  const std::vector<std::vector<int64_t>> shapes = {{1, 16, 2}, {3, 8, 7}, {64, 32, 7}, {3, 32, 5}};
  int case_index = 0;
  for (const auto& shape : shapes) {
    for (const at::ScalarType dtype : {at::kFloat, at::kDouble}) {
      for (const bool clip_on : {false, true}) {
        for (const bool noise_on : {false, true}) {
          at::manual_seed(1000 + case_index++);
          const auto opts = at::TensorOptions().dtype(dtype);
          const at::Tensor m = at::randn(shape, opts), x = at::randn(shape, opts);
          const std::optional<at::Tensor> noise =
              noise_on ? std::optional<at::Tensor>(at::randn(shape, opts)) : std::nullopt;
          at::Tensor coefs = at::randn({kNumCoefs}, at::kDouble);
          coefs[kSigma] = noise_on ? 0.5 : 0.0;
          std::vector<double> c(kNumCoefs);
          for (int k = 0; k < kNumCoefs; ++k) c[k] = coefs[k].item<double>();
          // A finite clip range that clips about half of x0.
          const at::Tensor x0 = c[0] * x.to(at::kDouble) + c[1] * m.to(at::kDouble);
          const double clip = clip_on ? x0.abs().median().item<double>()
                                      : std::numeric_limits<double>::infinity();

          const at::Tensor out = op.call(m, x, coefs, noise, clip);
          const double tol = dtype == at::kFloat ? 1e-6 : 1e-12;
          const double worst = worst_error_ratio(out, m, x, c, noise, clip, tol);
          const std::string name = "shape " + c10::str(at::IntArrayRef(shape)) + " " +
                                   c10::toString(dtype) + (clip_on ? " clip" : "") +
                                   (noise_on ? " noise" : "");
          if (out.sizes() != x.sizes() || out.scalar_type() != dtype) {
            fail(name + ": output shape or dtype differs from sample");
          } else if (!(worst <= 1.0)) {
            fail(name + ": error " + std::to_string(worst) + "x its bound");
          }
        }
      }
    }
  }
}

void expect_error(const std::string& name, const std::function<void()>& call,
                  const std::string& expected_text) {
  try {
    call();
  } catch (const c10::Error& e) {
    if (std::string(e.what()).find(expected_text) == std::string::npos) {
      fail(name + ": message lacks \"" + expected_text + "\": " + e.what_without_backtrace());
    }
    return;
  }
  fail(name + ": no error raised");
}

void test_rejects_bad_inputs() {
  const auto op = step_op();
  const at::Tensor m = at::randn({3, 16, 7});
  const at::Tensor x = at::randn({3, 16, 7});
  const at::Tensor noise = at::randn({3, 16, 7});
  at::Tensor coefs = at::randn({kNumCoefs}, at::kDouble);
  coefs[kSigma] = 0.5;
  const double inf = std::numeric_limits<double>::infinity();
  expect_error("shape mismatch", [&] { op.call(m.narrow(1, 0, 8), x, coefs, noise, inf); },
               "model_output must match sample (shape [3, 16, 7]");
  expect_error("float16",
               [&] { op.call(m.to(at::kHalf), x.to(at::kHalf), coefs, std::nullopt, inf); },
               "sample must be float32 or float64, got Half");
  expect_error("coefs shape", [&] { op.call(m, x, coefs.narrow(0, 0, 7), noise, inf); },
               "coefs must be float64 of shape (8,)");
  expect_error("coefs float32", [&] { op.call(m, x, coefs.to(at::kFloat), noise, inf); },
               "coefs must be float64 of shape (8,)");
  expect_error("noise missing", [&] { op.call(m, x, coefs, std::nullopt, inf); },
               "adds noise (sigma != 0) but noise is None");
  expect_error("clip range", [&] { op.call(m, x, coefs, noise, 0.0); }, "clip_range must be > 0");
}

}  // namespace

int main() {
  test_matches_double_loop();
  test_rejects_bad_inputs();
  if (g_failures != 0) {
    std::fprintf(stderr, "%d failure(s)\n", g_failures);
    return 1;
  }
  std::printf("test_scheduler_step: all passed\n");
  return 0;
}
