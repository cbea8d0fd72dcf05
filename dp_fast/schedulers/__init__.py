"""Noise schedulers: diffusers-compatible DDPM and DDIM, and the lesson's DDIM.

Each has ``set_timesteps(n)``, ``.timesteps``, ``add_noise(x0, noise, t)``,
``step(model_output, t, sample, generator=None) -> SchedulerOutput`` (``.prev_sample``) and
``step_coefficients()``, the per-step table the fused ``scheduler_step`` kernels read.
"""

from ._common import SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .lesson import LessonDDIMScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "LessonDDIMScheduler", "SchedulerOutput"]
