"""Chi et al.'s ``ConditionalUnet1D`` (Diffusion Policy, 2023), with the original module tree.

Module and parameter names follow the original (``diffusion_step_encoder``, ``down_modules``,
``mid_modules``, ``up_modules``, ``final_conv``, ``local_cond_encoder``; inside a residual block
``blocks.N.block.0/1``, ``cond_encoder.1``, ``residual_conv``), so its checkpoints load with
``strict=True``. Its quirks are kept on purpose, because published checkpoints depend on them:
the first skip is stored but never used, the up-path local-condition add never fires, and the
final Conv1dBlock uses 8 groups whatever ``n_groups`` is.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class SinusoidalPosEmb(nn.Module):
    """(B,) timesteps -> (B, dim): [sin(t * f_i), cos(t * f_i)], f_i = 10000^(-i / (dim/2 - 1)).
    Integer timesteps embed in the default dtype, as in the original; float ones in their own."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half_dim = self.dim // 2
        emb = math.log(10000) / (half_dim - 1)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        emb = torch.exp(torch.arange(half_dim, device=x.device, dtype=dtype) * -emb)
        emb = x[:, None] * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Downsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Upsample1d(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Conv1dBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish."""

    def __init__(self, inp_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(inp_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x):
        return self.block(x)


class _Unsqueeze(nn.Module):
    """(B, C) -> (B, C, 1); stands where the original has einops' Rearrange (no parameters)."""

    def forward(self, x):
        return x.unsqueeze(-1)


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with FiLM between them and a residual connection.

    x: (B, in_channels, T), cond: (B, cond_dim) -> (B, out_channels, T). FiLM is
    ``scale * out + bias`` when ``cond_predict_scale``, else ``out + bias``, with
    (scale, bias) = Linear(Mish(cond)).
    """

    def __init__(self, in_channels, out_channels, cond_dim, kernel_size=3, n_groups=8, cond_predict_scale=False):
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups=n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups=n_groups),
            ]
        )
        cond_channels = out_channels * 2 if cond_predict_scale else out_channels
        self.cond_predict_scale = cond_predict_scale
        self.out_channels = out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cond_channels), _Unsqueeze())
        self.residual_conv = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x, cond):
        out = self.blocks[0](x)
        embed = self.cond_encoder(cond)
        if self.cond_predict_scale:
            embed = embed.reshape(embed.shape[0], 2, self.out_channels, 1)
            out = embed[:, 0, ...] * out + embed[:, 1, ...]
        else:
            out = out + embed
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(nn.Module):
    """Chi et al.'s 1D U-Net.

    forward(sample (B, T, input_dim), timestep (B,) or scalar, local_cond (B, T, local_cond_dim)
    or None, global_cond (B, global_cond_dim) or None) -> (B, T, input_dim).
    T must be divisible by 2 ** (len(down_dims) - 1).
    """

    def __init__(
        self,
        input_dim: int,
        local_cond_dim: int | None = None,
        global_cond_dim: int | None = None,
        diffusion_step_embed_dim: int = 256,
        down_dims=(256, 512, 1024),
        kernel_size: int = 3,
        n_groups: int = 8,
        cond_predict_scale: bool = False,
    ):
        super().__init__()
        all_dims = [input_dim] + list(down_dims)
        start_dim = down_dims[0]
        dsed = diffusion_step_embed_dim
        self.diffusion_step_encoder = nn.Sequential(
            SinusoidalPosEmb(dsed),
            nn.Linear(dsed, dsed * 4),
            nn.Mish(),
            nn.Linear(dsed * 4, dsed),
        )
        cond_dim = dsed + (global_cond_dim or 0)
        in_out = list(zip(all_dims[:-1], all_dims[1:]))
        block = dict(cond_dim=cond_dim, kernel_size=kernel_size, n_groups=n_groups, cond_predict_scale=cond_predict_scale)

        self.local_cond_encoder = None
        if local_cond_dim is not None:
            _, dim_out = in_out[0]
            self.local_cond_encoder = nn.ModuleList(
                [
                    ConditionalResidualBlock1D(local_cond_dim, dim_out, **block),  # down encoder
                    ConditionalResidualBlock1D(local_cond_dim, dim_out, **block),  # up encoder
                ]
            )

        mid_dim = all_dims[-1]
        self.mid_modules = nn.ModuleList(
            [ConditionalResidualBlock1D(mid_dim, mid_dim, **block), ConditionalResidualBlock1D(mid_dim, mid_dim, **block)]
        )

        self.down_modules = nn.ModuleList([])
        for ind, (dim_in, dim_out) in enumerate(in_out):
            is_last = ind >= (len(in_out) - 1)
            self.down_modules.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(dim_in, dim_out, **block),
                        ConditionalResidualBlock1D(dim_out, dim_out, **block),
                        Downsample1d(dim_out) if not is_last else nn.Identity(),
                    ]
                )
            )

        self.up_modules = nn.ModuleList([])
        for ind, (dim_in, dim_out) in enumerate(reversed(in_out[1:])):
            is_last = ind >= (len(in_out) - 1)  # never true: every up level upsamples
            self.up_modules.append(
                nn.ModuleList(
                    [
                        ConditionalResidualBlock1D(dim_out * 2, dim_in, **block),
                        ConditionalResidualBlock1D(dim_in, dim_in, **block),
                        Upsample1d(dim_in) if not is_last else nn.Identity(),
                    ]
                )
            )

        self.final_conv = nn.Sequential(
            Conv1dBlock(start_dim, start_dim, kernel_size=kernel_size),  # 8 groups, as the original
            nn.Conv1d(start_dim, input_dim, 1),
        )

    def forward(self, sample, timestep, local_cond=None, global_cond=None):
        sample = sample.transpose(1, 2)  # (B, input_dim, T)
        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
        elif timesteps.dim() == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        dtype = self.diffusion_step_encoder[1].weight.dtype
        if dtype == torch.float64:
            timesteps = timesteps.double()  # a float64 copy (the kernels' ground truth) embeds in float64
        # the sinusoids in float32 (or float64), then in the weights' dtype: a bfloat16 copy's
        # Linear layers take bfloat16
        global_feature = self.diffusion_step_encoder[1:](self.diffusion_step_encoder[0](timesteps).to(dtype))
        if global_cond is not None:
            global_feature = torch.cat([global_feature, global_cond], dim=-1)

        h_local = []
        if local_cond is not None:
            local_cond = local_cond.transpose(1, 2)
            resnet, resnet2 = self.local_cond_encoder
            h_local.append(resnet(local_cond, global_feature))
            h_local.append(resnet2(local_cond, global_feature))

        x = sample
        h = []
        for idx, (resnet, resnet2, downsample) in enumerate(self.down_modules):
            x = resnet(x, global_feature)
            if idx == 0 and len(h_local) > 0:
                x = x + h_local[0]
            x = resnet2(x, global_feature)
            h.append(x)
            x = downsample(x)

        for mid_module in self.mid_modules:
            x = mid_module(x, global_feature)

        for idx, (resnet, resnet2, upsample) in enumerate(self.up_modules):
            x = torch.cat((x, h.pop()), dim=1)
            x = resnet(x, global_feature)
            # The original's condition; it is never true, so h_local[1] is never added.
            # Published checkpoints were trained this way.
            if idx == len(self.up_modules) and len(h_local) > 0:
                x = x + h_local[1]
            x = resnet2(x, global_feature)
            x = upsample(x)

        x = self.final_conv(x)
        return x.transpose(1, 2)
