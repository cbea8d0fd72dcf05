"""conv_block: one fused kernel for a whole convolution block of either U-Net.

Computes, for one batch element and one tile of output channels, all output time steps:

    y   = conv(cat(x, x2), weight) + bias                  # MODE: same / down / up, see below
    y   = GroupNorm(y)            if groups                 # statistics over (channels of group, T_out)
    y   = act(y)                                            # none / silu / mish
    y   = y * cond_scale + cond   (FiLM)  or  y + cond      # cond, cond_scale: (B, C_out) per call
    y  += residual  or  res_weight @ cat(residual, res_x2) + res_bias   # identity or 1x1 conv
    out = y                       or, with step=..., the scheduler step of y (see below)

Convolution modes (weights are packed as (C_out, C_in, K), contiguous):
    same : Conv1d(k=K odd, stride 1, padding K // 2)              T_out = T_in
    down : Conv1d(k=3, stride 2, padding 1)                       T_out = (T_in + 1) // 2
    up   : ConvTranspose1d(k=4, stride 2, padding 1), weight packed from (C_in, C_out, 4) by
           ``pack_conv_transpose``                                T_out = 2 * T_in
Step epilogue (the network's last layer): ``y`` is the model output m[b, c, t]; with the sample
x and noise read at [b, t, c] through their strides and one coefficient row (see
``dp_fast.ops.scheduler_step``), the kernel writes the scheduler's next sample to out[b, t, c];
``out`` may be the sample itself (every element is read and written by the same program).

Layouts: every activation is addressed through (batch, channel, time) strides, so a (B, T, C)
tensor is passed as ``t.transpose(1, 2)`` and no permute or concatenation is ever copied.
Assumes: T_out <= MAX_T (the whole sequence is one tile); weights float32, bfloat16 or float64
(float64 accumulates in float64, the others in float32); activations of any float dtype.
``dp_fast.ops.conv_block.conv_block_ref`` is the plain PyTorch twin with the same signature.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops.conv_block import ACTS, MODES, GroupNormArgs, StepArgs, out_length
from ..ops.scheduler_step import NUM_COEFS

MAX_T = 128  # the whole output sequence is one tile
TILE_ELEMENTS = 4096  # budget for the (channels x inputs x time) product tile of one iteration
BLOCK_C_NO_GN = 32  # output channels per program when there is no GroupNorm
NUM_WARPS = 4

_MODE_IDS = {m: i for i, m in enumerate(MODES)}
_ACT_IDS = {a: i for i, a in enumerate(ACTS)}
_COND_NONE, _COND_ADD, _COND_FILM = 0, 1, 2
_RES_NONE, _RES_IDENTITY, _RES_CONV = 0, 1, 2


# -- the kernel -------------------------------------------------------------------------------


@triton.jit
def _mish(y):
    # x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2); softplus(x) = x above 20.
    e = tl.exp(tl.minimum(y, 20.0))
    n = e * (e + 2.0)
    return tl.where(y > 20.0, y, y * n / (n + 2.0))


@triton.jit
def _accumulate(
    acc, x_ptr, sxb, sxc, sxt, C, w_ptr, w_row, w_col0,
    b, co, co_mask, t, t_mask, T_in,
    K: tl.constexpr, MODE: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    """acc[c, t] += sum_{ci < C, k < K} w[co, w_col0 + ci, k] * x[b, ci, src(t, k)]."""
    for k in tl.static_range(K):
        if MODE == 0:  # same
            src = t + (k - K // 2)
            ok = t_mask & (src >= 0) & (src < T_in)
        elif MODE == 1:  # down: stride 2, padding 1
            src = 2 * t + (k - 1)
            ok = t_mask & (src >= 0) & (src < T_in)
        else:  # up: transposed, stride 2, padding 1 -> t = 2 * src - 1 + k
            num = t + 1 - k
            src = num // 2
            ok = t_mask & (num >= 0) & ((num % 2) == 0) & (src < T_in)
        src = tl.where(ok, src, 0)
        for ci0 in range(0, C, BLOCK_CI):
            ci = ci0 + tl.arange(0, BLOCK_CI)
            ci_mask = ci < C
            xv = tl.load(
                x_ptr + b * sxb + ci[:, None] * sxc + src[None, :] * sxt,
                mask=ci_mask[:, None] & ok[None, :],
                other=0.0,
            ).to(acc.dtype)
            wv = tl.load(
                w_ptr + co[:, None] * w_row + (w_col0 + ci[None, :]) * K + k,
                mask=co_mask[:, None] & ci_mask[None, :],
                other=0.0,
            ).to(acc.dtype)
            acc += tl.sum(wv[:, :, None] * xv[None, :, :], axis=1)
    return acc


@triton.jit
def _conv_block_kernel(
    x_ptr, sxb, sxc, sxt, C1,
    x2_ptr, s2b, s2c, s2t, C2,
    w_ptr, bias_ptr, T_in, T_out, C_out,
    gn_w_ptr, gn_b_ptr, eps,
    cond_ptr, scale_ptr, scb, ssb,
    r_ptr, srb, src_, srt, CR1,
    r2_ptr, sr2b, sr2c, sr2t, CR2,
    rw_ptr, rb_ptr,
    out_ptr, sob, soc, sot,
    smp_ptr, smb, smc, smt,
    nz_ptr, snb, snc, snt,
    coef_ptr, clip,
    K: tl.constexpr, MODE: tl.constexpr, ACT: tl.constexpr, GN: tl.constexpr, COND: tl.constexpr,
    RES: tl.constexpr, HAS_X2: tl.constexpr, HAS_R2: tl.constexpr, STEP: tl.constexpr,
    HAS_NOISE: tl.constexpr, FP64: tl.constexpr,
    CPG: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_CI: tl.constexpr,
):
    b = tl.program_id(0)
    if GN:  # one program per group: its CPG channels
        co = tl.program_id(1) * CPG + tl.arange(0, BLOCK_C)
        co_mask = (tl.arange(0, BLOCK_C) < CPG) & (co < C_out)
    else:
        co = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        co_mask = co < C_out
    co = tl.where(co_mask, co, 0)
    t = tl.arange(0, BLOCK_T)
    t_mask = t < T_out
    acc_dtype = tl.float64 if FP64 else tl.float32
    acc = tl.zeros((BLOCK_C, BLOCK_T), dtype=acc_dtype)

    C_in = C1 + C2
    acc = _accumulate(acc, x_ptr, sxb, sxc, sxt, C1, w_ptr, C_in * K, 0, b, co, co_mask, t, t_mask, T_in, K, MODE, BLOCK_CI)
    if HAS_X2:
        acc = _accumulate(acc, x2_ptr, s2b, s2c, s2t, C2, w_ptr, C_in * K, C1, b, co, co_mask, t, t_mask, T_in, K, MODE, BLOCK_CI)
    y = acc + tl.load(bias_ptr + co, mask=co_mask, other=0.0).to(acc_dtype)[:, None]
    valid = co_mask[:, None] & t_mask[None, :]

    if GN:
        count = CPG * T_out
        mean = tl.sum(tl.sum(tl.where(valid, y, 0.0), axis=1), axis=0) / count
        d = tl.where(valid, y - mean, 0.0)
        var = tl.sum(tl.sum(d * d, axis=1), axis=0) / count
        gamma = tl.load(gn_w_ptr + co, mask=co_mask, other=0.0).to(acc_dtype)
        beta = tl.load(gn_b_ptr + co, mask=co_mask, other=0.0).to(acc_dtype)
        y = d / tl.sqrt(var + eps) * gamma[:, None] + beta[:, None]

    if ACT == 1:
        y = y * tl.sigmoid(y)
    elif ACT == 2:
        y = _mish(y)

    if COND == 2:
        y = y * tl.load(scale_ptr + b * ssb + co, mask=co_mask, other=0.0).to(acc_dtype)[:, None]
    if COND != 0:
        y = y + tl.load(cond_ptr + b * scb + co, mask=co_mask, other=0.0).to(acc_dtype)[:, None]

    if RES == 1:
        y += tl.load(r_ptr + b * srb + co[:, None] * src_ + t[None, :] * srt, mask=valid, other=0.0).to(acc_dtype)
    elif RES == 2:
        racc = tl.zeros((BLOCK_C, BLOCK_T), dtype=acc_dtype)
        CR = CR1 + CR2
        racc = _accumulate(racc, r_ptr, srb, src_, srt, CR1, rw_ptr, CR, 0, b, co, co_mask, t, t_mask, T_out, 1, 0, BLOCK_CI)
        if HAS_R2:
            racc = _accumulate(racc, r2_ptr, sr2b, sr2c, sr2t, CR2, rw_ptr, CR, CR1, b, co, co_mask, t, t_mask, T_out, 1, 0, BLOCK_CI)
        y += racc + tl.load(rb_ptr + co, mask=co_mask, other=0.0).to(acc_dtype)[:, None]

    if STEP:
        xs = tl.load(smp_ptr + b * smb + co[:, None] * smc + t[None, :] * smt, mask=valid, other=0.0).to(acc_dtype)
        a_x = tl.load(coef_ptr + 0).to(acc_dtype)
        a_m = tl.load(coef_ptr + 1).to(acc_dtype)
        b_x = tl.load(coef_ptr + 2).to(acc_dtype)
        b_m = tl.load(coef_ptr + 3).to(acc_dtype)
        c_x0 = tl.load(coef_ptr + 4).to(acc_dtype)
        c_eps = tl.load(coef_ptr + 5).to(acc_dtype)
        c_x = tl.load(coef_ptr + 6).to(acc_dtype)
        x0 = a_x * xs + a_m * y
        x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
        y = c_x0 * x0 + c_eps * (b_x * xs + b_m * y) + c_x * xs
        if HAS_NOISE:
            sigma = tl.load(coef_ptr + 7).to(acc_dtype)
            y += sigma * tl.load(nz_ptr + b * snb + co[:, None] * snc + t[None, :] * snt, mask=valid, other=0.0).to(acc_dtype)

    tl.store(out_ptr + b * sob + co[:, None] * soc + t[None, :] * sot, y, mask=valid)


# True when Triton's CPU interpreter (TRITON_INTERPRET=1 at import) runs the kernels.
INTERPRETED = type(_conv_block_kernel).__name__ == "InterpretedFunction"


# -- the launcher -------------------------------------------------------------------------------


def _strides(t: torch.Tensor | None):
    return (0, 0, 0) if t is None else tuple(t.stride())


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


def conv_block(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    x2: torch.Tensor | None = None,
    mode: str = "same",
    gn: GroupNormArgs | None = None,
    act: str = "none",
    cond: torch.Tensor | None = None,
    cond_scale: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    res_x2: torch.Tensor | None = None,
    res_weight: torch.Tensor | None = None,
    res_bias: torch.Tensor | None = None,
    step: StepArgs | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The fused block (module docstring). Shapes:
    x (B, C1, T_in), x2 (B, C2, T_in) or None; weight (C_out, C1 + C2, K) contiguous, bias (C_out,);
    cond, cond_scale (B, C_out) with unit channel stride; residual (B, CR1, T_out), res_x2
    (B, CR2, T_out), res_weight (C_out, CR1 + CR2) contiguous (None: identity), res_bias (C_out,);
    out (B, C_out, T_out), any strides, allocated when None. Returns out.
    """
    B, C1, T_in = x.shape
    C_out, C_in, K = weight.shape
    C2 = 0 if x2 is None else x2.shape[1]
    _check(mode in MODES, f"mode must be one of {MODES}, got {mode!r}")
    _check(act in ACTS, f"act must be one of {ACTS}, got {act!r}")
    _check(C_in == C1 + C2, f"weight has {C_in} input channels, inputs have {C1} + {C2}")
    _check(x2 is None or (x2.shape[0], x2.shape[2]) == (B, T_in), f"x2 must be (B={B}, C2, T={T_in}), got {None if x2 is None else tuple(x2.shape)}")
    _check(weight.is_contiguous() and bias.shape == (C_out,), "weight must be contiguous (C_out, C_in, K) and bias (C_out,)")
    _check(K % 2 == 1 if mode == "same" else K == {"down": 3, "up": 4}[mode], f"kernel size {K} does not fit mode {mode!r}")
    T_out = out_length(mode, T_in)
    _check(T_out <= MAX_T, f"conv_block handles T_out <= {MAX_T}, got {T_out}")
    dt = weight.dtype  # activations are stored in the weights' dtype; float64 accumulates in float64
    _check(dt in (torch.float32, torch.bfloat16, torch.float64), f"weight must be float32, bfloat16 or float64, got {dt}")
    if out is None:
        out = torch.empty((B, C_out, T_out), device=x.device, dtype=dt) if step is None else step.sample
    _check(tuple(out.shape) == (B, C_out, T_out), f"out must be (B, C_out, T_out) = {(B, C_out, T_out)}, got {tuple(out.shape)}")
    for name, c in (("cond", cond), ("cond_scale", cond_scale)):
        _check(c is None or (tuple(c.shape) == (B, C_out) and c.stride(1) == 1), f"{name} must be (B, C_out) = {(B, C_out)} with unit channel stride")
    _check(cond_scale is None or cond is not None, "cond_scale (FiLM) needs cond (the shift)")

    res_kind, CR1, CR2 = _RES_NONE, 0, 0
    if residual is not None:
        CR1 = residual.shape[1]
        CR2 = 0 if res_x2 is None else res_x2.shape[1]
        if res_weight is None:
            _check(CR1 == C_out and res_x2 is None, "an identity residual must have C_out channels")
            res_kind = _RES_IDENTITY
        else:
            _check(tuple(res_weight.shape) == (C_out, CR1 + CR2) and res_weight.is_contiguous(), f"res_weight must be contiguous (C_out, {CR1 + CR2})")
            res_kind = _RES_CONV
        for r in (residual, res_x2):
            _check(r is None or (r.shape[0], r.shape[2]) == (B, T_out), f"residual inputs must be (B, C, T_out={T_out})")

    if gn is not None:
        _check(C_out % gn.groups == 0, f"C_out={C_out} is not divisible by groups={gn.groups}")
        cpg = C_out // gn.groups
        block_c, grid_c = _pow2(cpg), gn.groups
    else:
        cpg, block_c = 1, min(BLOCK_C_NO_GN, _pow2(C_out))
        grid_c = triton.cdiv(C_out, block_c)
    block_t = _pow2(T_out)
    block_ci = max(1, min(_pow2(max(C_in, CR1 + CR2, 1)), TILE_ELEMENTS // (block_c * block_t)))
    block_ci = 1 << (block_ci.bit_length() - 1)  # a power of two

    if step is not None:
        _check(tuple(step.sample.shape) == (B, C_out, T_out), f"step.sample must be (B, C_out, T_out) = {(B, C_out, T_out)}")
        _check(step.coefs.shape == (NUM_COEFS,) and step.coefs.dtype == torch.float64, "step.coefs must be a float64 (8,) row")
    dummy = bias
    cond_t, scale_t = (cond if cond is not None else dummy), (cond_scale if cond_scale is not None else dummy)
    _conv_block_kernel[(B, grid_c)](
        x, *x.stride(), C1,
        x2 if x2 is not None else x, *_strides(x2), C2,
        weight, bias, T_in, T_out, C_out,
        gn.weight if gn else dummy, gn.bias if gn else dummy, float(gn.eps) if gn else 0.0,
        cond_t, scale_t, cond.stride(0) if cond is not None else 0, cond_scale.stride(0) if cond_scale is not None else 0,
        residual if residual is not None else dummy, *_strides(residual), CR1,
        res_x2 if res_x2 is not None else dummy, *_strides(res_x2), CR2,
        res_weight if res_weight is not None else dummy, res_bias if res_bias is not None else dummy,
        out, *out.stride(),
        step.sample if step else dummy, *_strides(step.sample if step else None),
        step.noise if step and step.noise is not None else dummy, *_strides(step.noise if step else None),
        step.coefs if step else dummy, float(step.clip_range) if step else 0.0,
        K=K, MODE=_MODE_IDS[mode], ACT=_ACT_IDS[act], GN=gn is not None,
        COND=_COND_NONE if cond is None else (_COND_FILM if cond_scale is not None else _COND_ADD),
        RES=res_kind, HAS_X2=x2 is not None, HAS_R2=res_x2 is not None,
        STEP=step is not None, HAS_NOISE=step is not None and step.noise is not None, FP64=dt == torch.float64,
        CPG=cpg, BLOCK_C=block_c, BLOCK_T=block_t, BLOCK_CI=block_ci, num_warps=NUM_WARPS,
    )
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"conv_block: {message}")
