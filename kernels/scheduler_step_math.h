// scheduler_step, one element: the math shared by the CPU kernel (csrc/scheduler_step.cpp)
// and the CUDA kernel (kernels/scheduler_step.cu), so the formula and the coefficient order
// live in one place.
//
//   x0   = clamp(a_x * x + a_m * m, -clip_range, clip_range)
//   eps  = b_x * x + b_m * m                       (from the unclipped prediction)
//   prev = c_x0 * x0 + c_eps * eps + c_x * x + sigma * noise
//
// Layout: the eight coefficients are one float64 row, indexed by the constants below; they
// must match COEF_* in dp_fast/ops/scheduler_step.py.
// Assumes: acc_t is float (for float32 tensors) or double (for float64); the caller converts
// the coefficients to acc_t once. Plain C++ (no CUDA types), so g++ can include it too.
#pragma once

#if defined(__CUDACC__)
#define DP_FAST_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DP_FAST_HOST_DEVICE inline
#endif

namespace dp_fast {

constexpr int kCoefX0FromSample = 0;   // a_x
constexpr int kCoefX0FromOutput = 1;   // a_m
constexpr int kCoefEpsFromSample = 2;  // b_x
constexpr int kCoefEpsFromOutput = 3;  // b_m
constexpr int kCoefPrevFromX0 = 4;     // c_x0
constexpr int kCoefPrevFromEps = 5;    // c_eps
constexpr int kCoefPrevFromSample = 6; // c_x
constexpr int kCoefNoiseStd = 7;       // sigma
constexpr int kNumCoefs = 8;

// The coefficient row converted once to the accumulation type.
template <typename acc_t>
struct StepCoefs {
  acc_t a_x, a_m, b_x, b_m, c_x0, c_eps, c_x, sigma;

  DP_FAST_HOST_DEVICE static StepCoefs load(const double* row) {
    return StepCoefs{
        static_cast<acc_t>(row[kCoefX0FromSample]),  static_cast<acc_t>(row[kCoefX0FromOutput]),
        static_cast<acc_t>(row[kCoefEpsFromSample]), static_cast<acc_t>(row[kCoefEpsFromOutput]),
        static_cast<acc_t>(row[kCoefPrevFromX0]),    static_cast<acc_t>(row[kCoefPrevFromEps]),
        static_cast<acc_t>(row[kCoefPrevFromSample]), static_cast<acc_t>(row[kCoefNoiseStd])};
  }
};

// Written with comparisons rather than fmin/fmax so that a NaN prediction stays NaN, as
// torch.clamp keeps it.
template <typename acc_t>
DP_FAST_HOST_DEVICE acc_t clamp_symmetric(acc_t v, acc_t range) {
  return v < -range ? -range : (v > range ? range : v);
}

// noise_value is ignored (pass 0) when the step has no noise.
template <typename acc_t>
DP_FAST_HOST_DEVICE acc_t scheduler_step_element(const StepCoefs<acc_t>& c, acc_t m, acc_t x,
                                                 acc_t noise_value, acc_t clip_range) {
  const acc_t x0 = clamp_symmetric(c.a_x * x + c.a_m * m, clip_range);
  const acc_t eps = c.b_x * x + c.b_m * m;
  return c.c_x0 * x0 + c.c_eps * eps + c.c_x * x + c.sigma * noise_value;
}

}  // namespace dp_fast
