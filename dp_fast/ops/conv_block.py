"""conv_block: the contract of the fused convolution block every fast backend implements, and
``conv_block_ref``, its plain PyTorch twin. The Triton kernel is ``dp_fast/triton/conv_block.py``;
its docstring gives the formula, the modes and the layouts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scheduler_step import scheduler_step_ref

MODES = ("same", "down", "up")
ACTS = ("none", "silu", "mish")


@dataclass
class GroupNormArgs:
    """GroupNorm after the convolution: ``groups`` groups, affine ``weight``/``bias`` (C_out,)."""

    groups: int
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float = 1e-5


@dataclass
class StepArgs:
    """The scheduler step fused after the last layer: sample, noise: (B, C_out, T) views
    (usually ``x.transpose(1, 2)`` of a (B, T, A) chunk), coefs: (8,) float64 row on the device."""

    sample: torch.Tensor
    noise: torch.Tensor | None
    coefs: torch.Tensor
    clip_range: float = math.inf


def pack_conv_transpose(weight: torch.Tensor) -> torch.Tensor:
    """ConvTranspose1d weight (C_in, C_out, K) -> the (C_out, C_in, K) layout ``conv_block`` reads."""
    return weight.permute(1, 0, 2).contiguous()


def out_length(mode: str, t_in: int) -> int:
    return {"same": t_in, "down": (t_in + 1) // 2, "up": 2 * t_in}[mode]


def conv_block_ref(
    x, weight, bias, *, x2=None, mode="same", gn=None, act="none", cond=None, cond_scale=None,
    residual=None, res_x2=None, res_weight=None, res_bias=None, step=None, out=None,
):
    """``conv_block`` in plain PyTorch ops (same signature; computes in the inputs' dtype)."""
    xin = x if x2 is None else torch.cat([x, x2], dim=1)
    K = weight.shape[2]
    if mode == "same":
        y = F.conv1d(xin, weight, bias, padding=K // 2)
    elif mode == "down":
        y = F.conv1d(xin, weight, bias, stride=2, padding=1)
    else:
        y = F.conv_transpose1d(xin, weight.permute(1, 0, 2), bias, stride=2, padding=1)
    if gn is not None:
        y = F.group_norm(y, gn.groups, gn.weight, gn.bias, gn.eps)
    if act == "silu":
        y = F.silu(y)
    elif act == "mish":
        y = F.mish(y)
    if cond_scale is not None:
        y = y * cond_scale[..., None]
    if cond is not None:
        y = y + cond[..., None]
    if residual is not None:
        r = residual if res_x2 is None else torch.cat([residual, res_x2], dim=1)
        y = y + (r if res_weight is None else F.conv1d(r, res_weight[..., None], res_bias))
    if step is not None:
        y = scheduler_step_ref(y, step.sample, step.coefs, step.noise, step.clip_range)
    if out is not None:
        out.copy_(y)
        return out
    return y
