"""dp_fast: Diffusion Policy (Chi et al., 2023) with a sample() fast enough for real-time control.

Public API: ``DiffusionPolicy``, ``dp_fast.models`` (``LessonUNet1D``, ``ConditionalUnet1D``),
``dp_fast.schedulers`` (``DDPMScheduler``, ``DDIMScheduler``, ``LessonDDIMScheduler``) and
``available_backends()``.
"""

from . import models, schedulers
from ._sampler import available_backends
from .policy import DiffusionPolicy

__version__ = "0.1.0"
__all__ = ["DiffusionPolicy", "available_backends", "models", "schedulers", "__version__"]
