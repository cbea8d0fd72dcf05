"""The reference networks against independent computations: the lesson's own class, and a
float64 functional re-implementation of Chi et al.'s U-Net written from the paper's description."""

import io
import math
import re

import pytest
import torch
import torch.nn.functional as F

from dp_fast.models import ConditionalUnet1D, LessonUNet1D, convert_chi_state_dict, convert_lerobot_state_dict

import lesson_original


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh random values in every parameter (GroupNorm affine included, never 1/0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / math.sqrt(max(p[0].numel(), 1))) + 0.1 * torch.rand(1, generator=g))
    return model


# -- the lesson's network -------------------------------------------------------------------


@pytest.mark.parametrize("action_dim,obs_dim,hidden,horizon,batch", [(7, 20, 256, 16, 1), (2, 5, 48, 8, 3), (3, 11, 30, 32, 4)])
def test_lesson_unet_loads_lesson_state_dict_and_matches(action_dim, obs_dim, hidden, horizon, batch):
    torch.manual_seed(0)
    original = _randomize(lesson_original.ConditionalUNet1D(action_dim, obs_dim, hidden), 1)
    ours = LessonUNet1D(action_dim, obs_dim, hidden)
    buf = io.BytesIO()
    torch.save(original.state_dict(), buf)
    buf.seek(0)
    ours.load_state_dict(torch.load(buf), strict=True)
    x = torch.randn(batch, horizon, action_dim)
    t = torch.randint(0, 100, (batch,))
    obs = torch.randn(batch, obs_dim)
    torch.testing.assert_close(ours(x, t, obs), original(x, t, obs), rtol=0, atol=0)


# -- Chi et al.'s network: parameter names ------------------------------------------------------


def _expected_chi_keys(down_dims, input_dim, local_cond_dim, cond_predict_scale):
    """The original's state_dict keys, derived from SPEC.md's description of its module tree."""
    def block(prefix, cin, cout):
        keys = [f"{prefix}.blocks.{i}.block.{j}.{w}" for i in (0, 1) for j in (0, 1) for w in ("weight", "bias")]
        keys += [f"{prefix}.cond_encoder.1.weight", f"{prefix}.cond_encoder.1.bias"]
        if cin != cout:
            keys += [f"{prefix}.residual_conv.weight", f"{prefix}.residual_conv.bias"]
        return keys

    dims = [input_dim, *down_dims]
    keys = [f"diffusion_step_encoder.{i}.{w}" for i in (1, 3) for w in ("weight", "bias")]
    if local_cond_dim is not None:
        keys += block("local_cond_encoder.0", local_cond_dim, down_dims[0]) + block("local_cond_encoder.1", local_cond_dim, down_dims[0])
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        keys += block(f"down_modules.{i}.0", cin, cout) + block(f"down_modules.{i}.1", cout, cout)
        if i < len(down_dims) - 1:
            keys += [f"down_modules.{i}.2.conv.weight", f"down_modules.{i}.2.conv.bias"]
    keys += block("mid_modules.0", dims[-1], dims[-1]) + block("mid_modules.1", dims[-1], dims[-1])
    for i, (cin, cout) in enumerate(reversed(list(zip(dims[1:-1], dims[2:])))):
        keys += block(f"up_modules.{i}.0", cout * 2, cin) + block(f"up_modules.{i}.1", cin, cin)
        keys += [f"up_modules.{i}.2.conv.weight", f"up_modules.{i}.2.conv.bias"]
    keys += [f"final_conv.0.block.{j}.{w}" for j in (0, 1) for w in ("weight", "bias")]
    keys += ["final_conv.1.weight", "final_conv.1.bias"]
    return keys


def test_conditional_unet1d_default_has_the_original_148_tensors():
    model = ConditionalUnet1D(2, global_cond_dim=40, kernel_size=5, cond_predict_scale=True)
    sd = model.state_dict()
    assert len(sd) == 148
    assert set(sd) == set(_expected_chi_keys((256, 512, 1024), 2, None, True))
    assert sum(v.numel() for v in sd.values()) * 4 == 263_133_192  # W2's fp32 weight bytes


@pytest.mark.parametrize("down_dims", [(16, 32), (16, 24, 32, 40)])
@pytest.mark.parametrize("local_cond_dim", [None, 3])
def test_conditional_unet1d_keys_match_the_original_tree(down_dims, local_cond_dim):
    model = ConditionalUnet1D(5, local_cond_dim=local_cond_dim, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=down_dims)
    assert set(model.state_dict()) == set(_expected_chi_keys(down_dims, 5, local_cond_dim, False))


# -- Chi et al.'s network: numbers ---------------------------------------------------------------


def _functional_chi_unet(sd, sample, timestep, local_cond, global_cond, *, down_dims, kernel_size, n_groups, cond_predict_scale):
    """Chi et al.'s forward pass written with torch.nn.functional over a state_dict, float64."""
    sd = {k: v.double() for k, v in sd.items()}

    def conv_block(prefix, x, groups):
        x = F.conv1d(x, sd[f"{prefix}.block.0.weight"], sd[f"{prefix}.block.0.bias"], padding=kernel_size // 2)
        x = F.group_norm(x, groups, sd[f"{prefix}.block.1.weight"], sd[f"{prefix}.block.1.bias"], eps=1e-5)
        return x * torch.tanh(F.softplus(x))

    def res_block(prefix, x, cond):
        out = conv_block(f"{prefix}.blocks.0", x, n_groups)
        c = F.linear(cond * torch.tanh(F.softplus(cond)), sd[f"{prefix}.cond_encoder.1.weight"], sd[f"{prefix}.cond_encoder.1.bias"])
        if cond_predict_scale:
            scale, bias = c.chunk(2, dim=1)
            out = scale[..., None] * out + bias[..., None]
        else:
            out = out + c[..., None]
        out = conv_block(f"{prefix}.blocks.1", out, n_groups)
        res = F.conv1d(x, sd[f"{prefix}.residual_conv.weight"], sd[f"{prefix}.residual_conv.bias"]) if f"{prefix}.residual_conv.weight" in sd else x
        return out + res

    dsed = sd["diffusion_step_encoder.1.weight"].shape[1]
    half = dsed // 2
    freqs = torch.exp(-math.log(10000) / (half - 1) * torch.arange(half, dtype=torch.float64))
    arg = timestep.double()[:, None] * freqs[None]
    emb = torch.cat([arg.sin(), arg.cos()], dim=1)
    emb = F.linear(emb, sd["diffusion_step_encoder.1.weight"], sd["diffusion_step_encoder.1.bias"])
    emb = F.linear(emb * torch.tanh(F.softplus(emb)), sd["diffusion_step_encoder.3.weight"], sd["diffusion_step_encoder.3.bias"])
    cond = emb if global_cond is None else torch.cat([emb, global_cond.double()], dim=1)

    x = sample.double().transpose(1, 2)
    local = None
    if local_cond is not None:
        local = res_block("local_cond_encoder.0", local_cond.double().transpose(1, 2), cond)
    skips = []
    for i in range(len(down_dims)):
        x = res_block(f"down_modules.{i}.0", x, cond)
        if i == 0 and local is not None:
            x = x + local
        x = res_block(f"down_modules.{i}.1", x, cond)
        skips.append(x)
        if i < len(down_dims) - 1:
            x = F.conv1d(x, sd[f"down_modules.{i}.2.conv.weight"], sd[f"down_modules.{i}.2.conv.bias"], stride=2, padding=1)
    x = res_block("mid_modules.1", res_block("mid_modules.0", x, cond), cond)
    for i in range(len(down_dims) - 1):
        x = torch.cat([x, skips.pop()], dim=1)
        x = res_block(f"up_modules.{i}.1", res_block(f"up_modules.{i}.0", x, cond), cond)
        x = F.conv_transpose1d(x, sd[f"up_modules.{i}.2.conv.weight"], sd[f"up_modules.{i}.2.conv.bias"], stride=2, padding=1)
    x = conv_block("final_conv.0", x, 8)
    x = F.conv1d(x, sd["final_conv.1.weight"], sd["final_conv.1.bias"])
    return x.transpose(1, 2)


CHI_CONFIGS = [
    # input_dim, local_cond_dim, global_cond_dim, dsed, down_dims, kernel, groups, scale, horizon, batch
    (2, None, 40, 32, (32, 64, 96), 5, 8, True, 16, 1),
    (3, None, 7, 16, (24, 40), 3, 4, False, 8, 3),
    (7, 5, 11, 16, (16, 24, 32, 48), 3, 8, True, 32, 2),
    (5, 2, None, 32, (40, 56), 5, 2, False, 12, 3),
    (1, None, 9, 16, (24, 40, 56, 72), 5, 8, False, 64, 1),
]


@pytest.mark.parametrize("cfg", CHI_CONFIGS, ids=lambda c: f"in{c[0]}-local{c[1]}-k{c[5]}-levels{len(c[4])}-scale{c[7]}-T{c[8]}")
def test_conditional_unet1d_matches_float64_functional(cfg):
    input_dim, local_dim, global_dim, dsed, down_dims, k, groups, scale, horizon, batch = cfg
    model = _randomize(ConditionalUnet1D(input_dim, local_dim, global_dim, dsed, down_dims, k, groups, scale), 3)
    sample = torch.randn(batch, horizon, input_dim)
    timestep = torch.randint(0, 100, (batch,))
    local = torch.randn(batch, horizon, local_dim) if local_dim else None
    glob = torch.randn(batch, global_dim) if global_dim else None
    expected = _functional_chi_unet(
        model.state_dict(), sample, timestep, local, glob, down_dims=down_dims, kernel_size=k, n_groups=groups, cond_predict_scale=scale
    )
    got64 = model.double()(sample.double(), timestep, local_cond=None if local is None else local.double(), global_cond=None if glob is None else glob.double())
    torch.testing.assert_close(got64, expected, rtol=1e-10, atol=1e-10)
    got32 = model.float()(sample, timestep, local_cond=local, global_cond=glob)
    assert ((got32.double() - expected).norm() / expected.norm()).item() < 1e-5
    # a bfloat16 copy: the step embedding's sinusoids are made in float32 and handed to the
    # Linear layers in bfloat16 (it raised a dtype mismatch before, found by the bf16 benchmark)
    bf16 = lambda t: None if t is None else t.bfloat16()  # noqa: E731
    got16 = model.bfloat16()(bf16(sample), timestep, local_cond=bf16(local), global_cond=bf16(glob))
    assert got16.dtype == torch.bfloat16
    assert ((got16.double() - expected).norm() / expected.norm()).item() < 5e-2


def test_conditional_unet1d_accepts_scalar_timestep():
    model = _randomize(ConditionalUnet1D(2, global_cond_dim=3, diffusion_step_embed_dim=16, down_dims=(16, 32)), 4)
    x, g = torch.randn(3, 8, 2), torch.randn(3, 3)
    torch.testing.assert_close(model(x, 17, global_cond=g), model(x, torch.full((3,), 17), global_cond=g))
    torch.testing.assert_close(model(x, torch.tensor(17), global_cond=g), model(x, torch.full((3,), 17), global_cond=g))


# -- checkpoints of the published implementations ---------------------------------------------------


def _as_lerobot(sd):
    """Our keys renamed the way LeRobot names them (SPEC.md), with the policy-level prefix."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"\.blocks\.0\.", ".conv1.", k)
        k = re.sub(r"\.blocks\.1\.", ".conv2.", k)
        k = re.sub(r"^((?:down|up)_modules\.\d+\.2)\.conv\.", r"\1.", k)
        out["diffusion.unet." + k] = v
    return out


def test_lerobot_state_dict_converts_and_gives_the_same_output():
    cfg = dict(input_dim=2, global_cond_dim=6, diffusion_step_embed_dim=16, down_dims=(16, 32, 48), kernel_size=5, cond_predict_scale=True)
    source = _randomize(ConditionalUnet1D(**cfg), 5)
    lerobot = _as_lerobot(source.state_dict())
    assert "diffusion.unet.down_modules.0.0.conv1.block.0.weight" in lerobot
    assert "diffusion.unet.down_modules.0.2.weight" in lerobot
    lerobot["diffusion.rgb_encoder.backbone.weight"] = torch.randn(3)  # not part of the U-Net
    target = ConditionalUnet1D(**cfg)
    target.load_state_dict(convert_lerobot_state_dict(lerobot), strict=True)
    x, t, g = torch.randn(2, 16, 2), torch.tensor([3, 70]), torch.randn(2, 6)
    torch.testing.assert_close(target(x, t, global_cond=g), source(x, t, global_cond=g), rtol=0, atol=0)


def test_chi_checkpoint_prefers_ema_weights():
    cfg = dict(input_dim=2, global_cond_dim=4, diffusion_step_embed_dim=16, down_dims=(16, 32))
    model_sd = _randomize(ConditionalUnet1D(**cfg), 6).state_dict()
    ema_sd = _randomize(ConditionalUnet1D(**cfg), 7).state_dict()
    ckpt = {**{"model." + k: v for k, v in model_sd.items()}, **{"ema_model." + k: v for k, v in ema_sd.items()}}
    loaded = ConditionalUnet1D(**cfg)
    loaded.load_state_dict(convert_chi_state_dict(ckpt), strict=True)
    torch.testing.assert_close(loaded.state_dict()["final_conv.1.weight"], ema_sd["final_conv.1.weight"])
    loaded.load_state_dict(convert_chi_state_dict(ckpt, ema=False), strict=True)
    torch.testing.assert_close(loaded.state_dict()["final_conv.1.weight"], model_sd["final_conv.1.weight"])


def test_conversion_rejects_a_state_dict_without_unet_keys():
    with pytest.raises(ValueError, match="LeRobot U-Net"):
        convert_lerobot_state_dict({"foo.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="Chi et al."):
        convert_chi_state_dict({"foo.weight": torch.zeros(1)})
