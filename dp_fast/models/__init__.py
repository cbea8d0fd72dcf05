"""The reference networks: the lesson's U-Net and Chi et al.'s ConditionalUnet1D."""

from .conditional_unet1d import ConditionalUnet1D
from .convert import convert_chi_state_dict, convert_lerobot_state_dict
from .lesson_unet import LessonUNet1D

__all__ = ["ConditionalUnet1D", "LessonUNet1D", "convert_chi_state_dict", "convert_lerobot_state_dict"]
