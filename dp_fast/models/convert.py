"""Load checkpoints of the published implementations into ``ConditionalUnet1D``.

LeRobot's diffusion U-Net differs from Chi et al.'s only in names: inside residual blocks
``conv1``/``conv2`` stand for ``blocks.0``/``blocks.1``, and the down/up-sampling convs have no
``.conv`` level. LeRobot prefixes the U-Net with ``diffusion.unet.``; Chi's checkpoints with
``model.`` (and keep the EMA weights under ``ema_model.``).
"""

from __future__ import annotations

import re

import torch

_LEROBOT_PREFIXES = ("diffusion.unet.", "unet.")
_SAMPLER_CONV = re.compile(r"^((?:down|up)_modules\.\d+\.2)\.(weight|bias)$")


def convert_lerobot_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LeRobot diffusion-policy state_dict (the whole policy, or only its U-Net) -> the
    state_dict of the equivalent ``ConditionalUnet1D``. Keys outside the U-Net (observation
    encoders, normalisation buffers) are dropped. Raises ValueError when no U-Net key is found."""
    prefix = next((p for p in _LEROBOT_PREFIXES if any(k.startswith(p) for k in state_dict)), "")
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        if not key.split(".")[0] in ("diffusion_step_encoder", "down_modules", "mid_modules", "up_modules", "final_conv"):
            continue
        key = key.replace(".conv1.", ".blocks.0.").replace(".conv2.", ".blocks.1.")
        key = _SAMPLER_CONV.sub(r"\1.conv.\2", key)
        out[key] = value
    if not out:
        raise ValueError("no LeRobot U-Net keys found (expected keys like 'diffusion.unet.down_modules.0.0.conv1...')")
    return out


def convert_chi_state_dict(state_dict: dict[str, torch.Tensor], ema: bool = True) -> dict[str, torch.Tensor]:
    """A Chi et al. policy state_dict (keys ``model.*`` and, if trained with EMA, ``ema_model.*``)
    -> the ``ConditionalUnet1D`` state_dict. ``ema=True`` takes the EMA weights when present."""
    for prefix in (("ema_model.", "model.") if ema else ("model.",)):
        out = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if out:
            return out
    raise ValueError("no Chi et al. U-Net keys found (expected keys starting with 'model.' or 'ema_model.')")
