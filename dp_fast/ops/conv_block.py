"""conv_block: the contract of the fused convolution block every fast backend implements, and
``conv_block_ref``, its plain PyTorch twin. The Triton kernel is ``dp_fast/triton/conv_block.py``;
its docstring gives the formula, the modes and the layouts."""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .scheduler_step import NUM_COEFS, scheduler_step_ref

MODES = ("same", "down", "up")
ACTS = ("none", "silu", "mish")
MAX_OFFSET = 1 << 31  # the kernels' element offsets into an activation or the weights are 32-bit


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


@dataclass
class HeadArgs:
    """A 1x1 convolution after the block, fused into it (Chi's ``final_conv``: the last
    Conv1dBlock, then Conv1d(C_out, A, 1)): weight (A, C_out) contiguous, bias (A,). The call's
    output, and its step's sample and noise, then have A channels."""

    weight: torch.Tensor
    bias: torch.Tensor


def conv_transpose_layout(weight: torch.Tensor) -> torch.Tensor:
    """ConvTranspose1d weight (C_in, C_out, K) -> a view of it in the (C_out, C_in, K) order
    ``conv_block`` reads (contiguous, as the fast path packs it)."""
    return weight.permute(1, 0, 2)


def out_length(mode: str, t_in: int) -> int:
    return {"same": t_in, "down": (t_in + 1) // 2, "up": 2 * t_in}[mode]


@dataclass
class Shapes:
    """The sizes of one checked ``conv_block`` call (``check_call``)."""

    B: int
    C1: int
    C2: int
    T_in: int
    T_out: int
    C_out: int
    C_in: int
    K: int
    CR1: int  # residual channels (0: none)
    CR2: int  # residual skip channels
    res: str  # "none", "identity" or "conv"
    out: torch.Tensor  # the output, allocated (or step.sample) when the caller passed None
    C_head: int  # the output's channels: the head's A, or C_out without a head


def check_call(x, weight, bias, *, x2, mode, gn, act, cond, cond_scale, residual, res_x2, res_weight, res_bias,
               step, out, max_t: int, head=None) -> Shapes:
    """Checks one ``conv_block`` call of any backend; raises ValueError naming what was
    expected. Allocates ``out`` in the weights' dtype when it is None (``step.sample`` with a step)."""
    _check(x.dim() == 3 and weight.dim() == 3, f"x must be (B, C1, T_in) and weight (C_out, C_in, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    B, C1, T_in = x.shape
    C_out, C_in, K = weight.shape
    C2 = 0 if x2 is None else x2.shape[1]
    _check(mode in MODES, f"mode must be one of {MODES}, got {mode!r}")
    _check(act in ACTS, f"act must be one of {ACTS}, got {act!r}")
    _check(C_in == C1 + C2, f"weight has {C_in} input channels, inputs have {C1} + {C2}")
    _check(x2 is None or (x2.dim() == 3 and (x2.shape[0], x2.shape[2]) == (B, T_in)), f"x2 must be (B={B}, C2, T={T_in}), got {None if x2 is None else tuple(x2.shape)}")
    _check(x2 is None or x2.dtype == x.dtype, f"x2 must have x's dtype ({x.dtype}), got {None if x2 is None else x2.dtype}")
    _check(weight.is_contiguous() and bias.shape == (C_out,), "weight must be contiguous (C_out, C_in, K) and bias (C_out,)")
    _check(K % 2 == 1 if mode == "same" else K == {"down": 3, "up": 4}[mode], f"kernel size {K} does not fit mode {mode!r}")
    T_out = out_length(mode, T_in)
    _check(T_out <= max_t, f"conv_block handles T_out <= {max_t}, got {T_out}")
    dt = weight.dtype  # activations are stored in the weights' dtype
    _check(dt in (torch.float32, torch.bfloat16, torch.float64), f"weight must be float32, bfloat16 or float64, got {dt}")
    C_head, what = C_out, "C_out"
    if head is not None:
        C_head, what = head.weight.shape[0] if head.weight.dim() == 2 else -1, "A"
        _check(head.weight.dim() == 2 and head.weight.shape[1] == C_out and head.weight.is_contiguous(),
               f"head.weight must be contiguous (A, C_out={C_out}), got {tuple(head.weight.shape)}")
        _check(tuple(head.bias.shape) == (C_head,), f"head.bias must be (A,) = ({C_head},), got {tuple(head.bias.shape)}")
        _check(head.weight.dtype == dt and head.bias.dtype == dt, f"the head's weight and bias must have the weight's dtype ({dt})")
        _check(1 <= C_head <= HEAD_MAX_CHANNELS, f"the kernels fuse a head of 1 to {HEAD_MAX_CHANNELS} channels, got {C_head}")
    if out is None:
        out = torch.empty((B, C_head, T_out), device=x.device, dtype=dt) if step is None else step.sample
    _check(tuple(out.shape) == (B, C_head, T_out), f"out must be (B, {what}, T_out) = {(B, C_head, T_out)}, got {tuple(out.shape)}")
    for name, c in (("cond", cond), ("cond_scale", cond_scale)):
        _check(c is None or (tuple(c.shape) == (B, C_out) and c.stride(1) == 1), f"{name} must be (B, C_out) = {(B, C_out)} with unit channel stride")
    _check(cond_scale is None or cond is not None, "cond_scale (FiLM) needs cond (the shift)")
    res, CR1, CR2 = "none", 0, 0
    if residual is not None:
        CR1 = residual.shape[1]
        CR2 = 0 if res_x2 is None else res_x2.shape[1]
        if res_weight is None:
            _check(CR1 == C_out and res_x2 is None, "an identity residual must have C_out channels")
            res = "identity"
        else:
            _check(tuple(res_weight.shape) == (C_out, CR1 + CR2) and res_weight.is_contiguous(), f"res_weight must be contiguous (C_out, {CR1 + CR2})")
            _check(res_bias is not None and tuple(res_bias.shape) == (C_out,), f"res_bias must be (C_out,) = ({C_out},)")
            res = "conv"
        for r in (residual, res_x2):
            _check(r is None or (r.dim() == 3 and (r.shape[0], r.shape[2]) == (B, T_out)), f"residual inputs must be (B, C, T_out={T_out})")
        _check(res_x2 is None or res_x2.dtype == residual.dtype, f"res_x2 must have residual's dtype ({residual.dtype}), got {None if res_x2 is None else res_x2.dtype}")
    if gn is not None:
        _check(C_out % gn.groups == 0, f"C_out={C_out} is not divisible by groups={gn.groups}")
        _check(tuple(gn.weight.shape) == (C_out,) and tuple(gn.bias.shape) == (C_out,), f"GroupNorm weight and bias must be (C_out,) = ({C_out},)")
    if step is not None:
        _check(tuple(step.sample.shape) == (B, C_head, T_out), f"step.sample must be (B, {what}, T_out) = {(B, C_head, T_out)}")
        _check(step.noise is None or tuple(step.noise.shape) == (B, C_head, T_out), f"step.noise must be (B, {what}, T_out) = {(B, C_head, T_out)}")
        _check(step.coefs.shape == (NUM_COEFS,) and step.coefs.dtype == torch.float64, "step.coefs must be a float64 (8,) row")
    activations = {"x": x, "x2": x2, "residual": residual, "res_x2": res_x2, "out": out}
    if step is not None:
        activations.update({"step.sample": step.sample, "step.noise": step.noise})
    for name, t in activations.items():  # the kernels index activations and weights with 32-bit offsets
        last = sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) if t is not None else 0
        _check(last < MAX_OFFSET, f"{name} spans {last + 1} elements; the kernels index an activation with 32-bit offsets (fewer than 2^31)")
    _check(weight.numel() < MAX_OFFSET, f"weight has {weight.numel()} elements; the kernels take fewer than 2^31")
    tensors = [x, x2, weight, bias, cond, cond_scale, residual, res_x2, res_weight, res_bias, out]
    tensors += [gn.weight, gn.bias] if gn is not None else []
    tensors += [step.sample, step.noise, step.coefs] if step is not None else []
    tensors += [head.weight, head.bias] if head is not None else []
    for t in tensors:
        _check(t is None or t.device == x.device, f"every tensor must be on x's device ({x.device}), got one on {None if t is None else t.device}")
    return Shapes(B, C1, C2, T_in, T_out, C_out, C_in, K, CR1, CR2, res, out, C_head)


# -- what the backends' split reductions share, per device --------------------------------------

ARRIVAL_COUNTERS = 1 << 16  # int32 counters per device, zero between launches
_device_state: dict = {}


def arrival_counters(device: torch.device, needed: int) -> torch.Tensor:
    """The device's arrival counters (one per region of a split launch; the last program of a
    region resets its counter), shared by every backend: launches on one device must not run
    concurrently on two streams (the fast path's ``sample()`` calls do not:
    ``_fastpath._DeviceOrder``)."""
    _check(needed <= ARRIVAL_COUNTERS, f"too many output regions ({needed}) for the {ARRIVAL_COUNTERS} arrival counters")
    key = ("counters", device)
    if key not in _device_state:
        with torch.inference_mode(False):  # written by every launch, in inference mode or not
            _device_state[key] = torch.zeros(ARRIVAL_COUNTERS, dtype=torch.int32, device=device)
    return _device_state[key]


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 4 elsewhere (Triton's interpreter: a small "machine",
    so that tests exercise the split paths)."""
    if device.type != "cuda":
        return 4
    key = ("sms", device)
    if key not in _device_state:
        _device_state[key] = torch.cuda.get_device_properties(device).multi_processor_count
    return _device_state[key]


def split_reduction(tiles: int, chunks: int, resident: int, min_chunks: int) -> tuple[int, int]:
    """How far a launch splits its reduction: (splits, chunks per split) for ``tiles`` output
    tiles whose reduction is ``chunks`` chunks long, on a device that holds ``resident``
    programs at once, each split at least ``min_chunks`` chunks long (the last may be shorter).

    At batch 1 a program's time is about its number of chunks (each a dependent load) plus one
    for its start and its partial sums, and programs past the first ``resident`` run in a second
    wave after them; so the split minimises waves x (chunks per split + 1), the fewer splits on
    a tie. A split that only fills the device (``resident / tiles`` rounded up) can cost a whole
    second wave: on the H200 (2026-11-26) W2's 1024-channel blocks at 288 programs (two waves of
    2 x 132) took 16.5 us where a block of the same bytes at 256 took 10.9, in both backends."""
    if torch.compiler.is_compiling():  # Dynamo ignores a functools cache, and warns of a "potential risk"
        return _split_reduction(tiles, chunks, resident, min_chunks)
    return _split_reduction_kept(tiles, chunks, resident, min_chunks)


def _split_reduction(tiles: int, chunks: int, resident: int, min_chunks: int) -> tuple[int, int]:
    """``split_reduction``'s answer, worked out."""
    best, resident = None, max(resident, 1)
    for split in range(1, max(1, chunks // min_chunks) + 1):
        per = -(-chunks // split)
        cost = (-(-tiles * split // resident) * (per + 1), split)
        best = min(best or cost, cost)
    per = -(-chunks // best[1])
    return -(-chunks // per), per  # no empty splits


_split_reduction_kept = functools.lru_cache(maxsize=4096)(_split_reduction)


# Programmatic dependent launch (PDL, sm_90 and later) for the fast backends' conv_block: a
# launch may start while the one before it on the stream is finishing. Its programs first ask the
# L2 cache for the start of their weight slice (at most PREFETCH_BYTES each; the CUDA kernel's
# weight ring also copies its first stages: weights are never written while a sampler runs, and
# a caller must not write them in the launch just before), let the next launch start, and then
# wait for the previous launch to complete and its writes to be visible (griddepcontrol.wait)
# before touching anything else,
# so the launch gap and the first weight loads overlap the previous block's tail. Off with
# DP_FAST_PDL=0; DP_FAST_PREFETCH_BYTES=0 keeps the overlap without the prefetch.
PDL = os.environ.get("DP_FAST_PDL", "1").strip() != "0"
# The widest 1x1 convolution a fast backend fuses after a block (``head``: Chi's output conv, A =
# the action's dimension; kConvMaxHeadChannels in kernels/conv_block.cuh). Whether the fast path
# fuses it into the network's last block is each backend's conv_block's ``head_channels``
# (``head_channels()``): one launch an evaluation fewer (one grid barrier fewer in the CUDA
# chain), for a longer finish of that block's last programs; untimed. DP_FAST_HEAD=0 launches
# the output conv as a block of its own, as before 2026-11-29, on both backends.
HEAD_MAX_CHANNELS = 32
HEAD = os.environ.get("DP_FAST_HEAD", "1").strip()
if HEAD not in ("0", "1"):
    raise ValueError(f"DP_FAST_HEAD must be 0 or 1, got {HEAD!r}")


def head_channels() -> int:
    """A backend conv_block's ``head_channels``: HEAD_MAX_CHANNELS, or 0 with DP_FAST_HEAD=0."""
    return HEAD_MAX_CHANNELS if HEAD == "1" else 0

PREFETCH_BYTES = int(os.environ.get("DP_FAST_PREFETCH_BYTES", "32768"))
PREFETCH_LINE_BYTES = 128  # one L2 prefetch request per 128-byte line


def dependent_launch(device: torch.device) -> bool:
    """Whether conv_block launches on ``device`` use PDL: a CUDA device of compute capability 9.0
    or later, unless DP_FAST_PDL=0."""
    if not PDL or device.type != "cuda":
        return False
    key = ("pdl", device)
    if key not in _device_state:
        # the properties, not get_device_capability: torch.compile folds them to a constant
        _device_state[key] = torch.cuda.get_device_properties(device).major >= 9
    return _device_state[key]


class ProbeRecords:
    """A backend's probed launches (its ``probing()``): ``active`` is None, or the list the
    launches made inside ``probing()`` append their records to."""

    def __init__(self):
        self.active: list | None = None

    @contextlib.contextmanager
    def probing(self):
        saved, self.active = self.active, []
        try:
            yield self.active
        finally:
            self.active = saved


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"conv_block: {message}")


def conv_block_ref(
    x, weight, bias, *, x2=None, mode="same", gn=None, act="none", cond=None, cond_scale=None,
    residual=None, res_x2=None, res_weight=None, res_bias=None, head=None, step=None, out=None, tf32=False,
):
    """``conv_block`` in plain PyTorch ops (same signature; computes in the inputs' dtype;
    ``tf32`` is accepted and ignored: it only allows the kernels a coarser rounding)."""
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
    if head is not None:
        y = F.conv1d(y, head.weight[..., None], head.bias)
    if step is not None:
        y = scheduler_step_ref(y, step.sample, step.coefs, step.noise, step.clip_range)
    if out is not None:
        out.copy_(y)
        return out
    return y
