"""DDIM (Song et al., 2021) with diffusers' ``DDIMScheduler`` arguments and numbers."""

from __future__ import annotations

import math

import torch

from ._common import (
    DiffusersScheduler,
    SchedulerOutput,
    as_int,
    coefficient_row,
    randn,
    x0_eps_coefficients,
)


class DDIMScheduler(DiffusersScheduler):
    """Denoising diffusion implicit models; the keyword arguments are diffusers'.

    ``set_timesteps(n)`` picks ``n`` "leading" timesteps; ``step(model_output, t, sample,
    eta=0.0, generator=None)`` returns a ``SchedulerOutput``. With ``eta > 0`` each step adds
    ``std_dev_t * N(0, I)`` drawn from ``generator`` (on every step, as diffusers does).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, clip_sample,
                         clip_sample_range, steps_offset, prediction_type, thresholding, timestep_spacing, rescale_betas_zero_snr)
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def _alphas(self, t: int):
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        return alpha_prod_t, alpha_prod_t_prev

    def _variance(self, alpha_prod_t, alpha_prod_t_prev):
        beta_prod_t, beta_prod_t_prev = 1 - alpha_prod_t, 1 - alpha_prod_t_prev
        return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)

    def step(self, model_output, timestep, sample, eta: float = 0.0, generator=None, variance_noise=None):
        """One DDIM update. model_output, sample: (B, T, D); timestep: int (one of ``.timesteps``)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps(n) before step()")
        t = as_int(timestep)
        alpha_prod_t, alpha_prod_t_prev = self._alphas(t)
        beta_prod_t = 1 - alpha_prod_t
        if self.prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif self.prediction_type == "sample":
            pred_original_sample = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original_sample) / beta_prod_t**0.5
        else:  # v_prediction
            pred_original_sample = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        if self.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-self.clip_sample_range, self.clip_sample_range)
        std_dev_t = eta * self._variance(alpha_prod_t, alpha_prod_t_prev) ** 0.5
        pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_t_prev**0.5 * pred_original_sample + pred_sample_direction
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + std_dev_t * variance_noise
        return SchedulerOutput(prev_sample, pred_original_sample)

    def step_coefficients(self, eta: float = 0.0) -> torch.Tensor:
        """(len(timesteps), 8) float64: row i is step i as the ``scheduler_step`` affine map."""
        rows = []
        for t in self.timesteps.tolist():
            ab_t, ab_prev = (float(a) for a in self._alphas(t))
            std = eta * self._variance(ab_t, ab_prev) ** 0.5
            a_x, a_m, b_x, b_m = x0_eps_coefficients(self.prediction_type, ab_t)
            rows.append(coefficient_row(a_x, a_m, b_x, b_m, math.sqrt(ab_prev), math.sqrt(1 - ab_prev - std**2), 0.0, std))
        return torch.tensor(rows, dtype=torch.float64)

    def noise_draws(self, eta: float = 0.0) -> list[bool]:
        """Per step of ``.timesteps``: whether ``step()`` draws noise (every step when eta > 0)."""
        return [eta > 0] * len(self.timesteps)
