"""What every fast backend shares: weight packing, the network as a list of fused blocks, the
conditioning hoisted out of the loop, the loop itself and the CUDA-graph cache.

A backend supplies one function, ``conv_block`` (see ``dp_fast/triton/conv_block.py`` for its
contract; its attribute ``head_channels``, 0 when absent, is the widest 1x1 convolution it fuses
after a block, which lets Chi's output conv and the step join the network's last block);
everything here is written once for all backends.

One ``sample()`` on the fast path:
1. ``hoist``: one batched computation gives, for every step of the schedule and every batch
   element, the conditioning of every block (step embedding + observation; FiLM scale and bias
   for Chi's network, time + observation embedding for the lesson's) -> ``table`` (n, B, width).
   Its step part (``hoist_steps``) depends on the schedule and the weights alone, so a call
   computes the observation part and the sum, and the step part where the weights may have
   changed (``FastSampler._follow_weights``).
2. the loop: per step, the network's fused blocks; the last one applies the scheduler step and
   writes the next sample in place. No host synchronisation anywhere.
3. on CUDA, steps 1-2 are captured once per (batch size, steps; at most ``max_captures``, least
   recently used dropped first) into one CUDA graph with static buffers, and replayed. Kernels
   read the parameters' own memory where it already has the layout and dtype they want
   (float32 weights: no second copy of the network; W3's is 1 GB), packed copies elsewhere.
   Where the program computes in the model's dtype, those copies (the transposed convolutions'
   weights and the concatenated conditioning layers', 22 MB of W2's 263) and the step part of
   the table are made again at the start of every sample, inside the graph, so a write through
   ``.data`` (which moves no version counter) is read too. In bfloat16 from a float32 model,
   where every weight is a copy, they are made again when a parameter's version counter moves
   (an optimizer step, ``load_state_dict``, an EMA update under ``torch.no_grad()``), and a
   write through ``.data`` is not seen. Where a parameter is replaced by another (its memory is
   elsewhere), the program and the captures are made again, so a captured graph never replays
   stale weights. A change is seen through each parameter's version counter and storage
   (``_WeightsVersion``); a parameter put into a module's ``_parameters`` table by hand is not
   (README, "The API"). A change of the scheduler's settings drops the captures
   (``_schedule_state``).
4. calls from several threads or CUDA streams take turns per device (``_DeviceOrder``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .models import ConditionalUnet1D, LessonUNet1D
from .schedulers import DDIMScheduler, DDPMScheduler, LessonDDIMScheduler
from .ops.conv_block import GroupNormArgs, HeadArgs, StepArgs, conv_transpose_layout
from .schedulers._common import randn_rows

PRECISIONS = ("fp32", "tf32", "bf16")


def check_precision(precision) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


@dataclass
class Block:
    """One ``conv_block`` call. Activations are named: "x" is the sample, read as (B, A, T)."""

    x: str
    out: str
    weight: torch.Tensor
    bias: torch.Tensor
    x2: str | None = None
    mode: str = "same"
    gn: GroupNormArgs | None = None
    act: str = "none"
    cond: tuple[int, int] | None = None  # (column offset in the table, channels): added
    scale: tuple[int, int] | None = None  # FiLM scale columns, when the block has FiLM
    residual: str | None = None
    res_x2: str | None = None
    res_weight: torch.Tensor | None = None
    res_bias: torch.Tensor | None = None
    head: HeadArgs | None = None  # a 1x1 convolution fused after the block (Chi's output conv)
    step: bool = False  # the last block: its output is the model output, stepped into "x"


@dataclass
class Program:
    """The network as fused blocks, plus what ``hoist`` needs. Its tensors are the parameters
    themselves where the kernels can read them as they are, else packed copies (``_Builder.pack``)."""

    blocks: list[Block]
    channels: dict[str, tuple[int, int]]  # activation -> (channels, time divisor)
    hoist_weights: dict[str, torch.Tensor]
    width: int  # columns of the conditioning table
    kind: str  # "chi" or "lesson"
    # each packed copy (or part of one) with the parameter, or the view of one, it is made from
    sources: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


def copy_sources(sources: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Makes each packed copy of ``sources`` (``Program.sources``) again from the parameter it is
    made from: one multi-tensor copy for the parts that only gather (the conditioning layers'
    rows, in their own dtype), one copy each for the rest (a transposed convolution's weight, a
    conversion to another dtype). No host synchronisation: a CUDA graph captures it."""
    gather, rest = [], []
    for dst, src in sources:
        (gather if dst.dtype == src.dtype and src.is_contiguous() else rest).append((dst, src))
    with torch.no_grad():
        if gather:
            torch._foreach_copy_([dst for dst, _ in gather], [src for _, src in gather])
        for dst, src in rest:
            dst.copy_(src)


class _Builder:
    def __init__(self, dtype):
        self.dtype, self.blocks, self.channels, self.cond_linears = dtype, [], {}, []
        self.sources: list[tuple[torch.Tensor, torch.Tensor]] = []  # Program.sources
        self._n = 0

    def pack(self, t: torch.Tensor, dtype=None) -> torch.Tensor:
        """t as the kernels read it, in ``dtype`` (the program's by default): t itself (a
        parameter's own memory, no copy) where it already is a contiguous tensor of that dtype
        (float32 weights in float32, the transposed convolutions' aside), else a contiguous copy,
        listed in ``sources`` with what it is made from."""
        t = t.detach()  # the same memory: the parameter, or a view of it (a transposed convolution's)
        if t.dtype == (dtype or self.dtype) and t.is_contiguous():
            return t
        return self.pack_rows([t], dtype or self.dtype)

    def pack_rows(self, ts: list[torch.Tensor], dtype) -> torch.Tensor:
        """The tensors ``ts`` one after the other along their first dimension, as one contiguous
        copy in ``dtype`` (the conditioning layers' weights, concatenated), each part listed in
        ``sources`` with the tensor it is made from."""
        ts = [t.detach() for t in ts]
        out = torch.empty((sum(t.shape[0] for t in ts), *ts[0].shape[1:]), dtype=dtype, device=ts[0].device)
        parts = list(zip(out.split([t.shape[0] for t in ts]), ts))
        copy_sources(parts)
        self.sources += parts
        return out

    def constant(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor no parameter is behind (never made again), in the program's dtype."""
        return t.to(self.dtype).contiguous()

    def tmp(self, channels: int, divisor: float) -> str:
        self._n += 1
        name = f"a{self._n}"
        self.channels[name] = (channels, divisor)
        return name

    def cond_columns(self, linear: torch.nn.Linear) -> int:
        offset = sum(l.out_features for l in self.cond_linears)
        self.cond_linears.append(linear)
        return offset

    def conv(self, conv, **kw) -> Block:
        w = conv_transpose_layout(conv.weight) if isinstance(conv, torch.nn.ConvTranspose1d) else conv.weight
        block = Block(weight=self.pack(w), bias=self.pack(conv.bias), **kw)
        self.blocks.append(block)
        return block


def _gn(norm: torch.nn.GroupNorm, b: _Builder) -> GroupNormArgs:
    return GroupNormArgs(norm.num_groups, b.pack(norm.weight), b.pack(norm.bias), norm.eps)


def _chi_program(model: ConditionalUnet1D, dtype, head_channels: int = 0) -> Program:
    if model.local_cond_encoder is not None:
        raise NotImplementedError("the fast backends do not take a local condition (DiffusionPolicy never passes one)")
    b = _Builder(dtype)
    b.channels["x"] = (model.final_conv[1].out_channels, 1)

    def res_block(blk, x, x2, divisor):
        c = blk.out_channels
        off = b.cond_columns(blk.cond_encoder[1])
        film = blk.cond_predict_scale
        mid, out = b.tmp(c, divisor), b.tmp(c, divisor)
        b.conv(blk.blocks[0].block[0], x=x, x2=x2, out=mid, gn=_gn(blk.blocks[0].block[1], b), act="mish",
               cond=(off + c, c) if film else (off, c), scale=(off, c) if film else None)
        rc = blk.residual_conv
        if not isinstance(rc, torch.nn.Identity):
            res_weight, res_bias = b.pack(rc.weight[..., 0]), b.pack(rc.bias)
        elif x2 is not None:  # cat(x, skip) added as it is (an up block as wide as its input): a 1x1 conv by the identity
            device = blk.blocks[1].block[0].weight.device
            res_weight, res_bias = b.constant(torch.eye(c, device=device)), b.constant(torch.zeros(c, device=device))
        else:
            res_weight = res_bias = None
        b.conv(blk.blocks[1].block[0], x=mid, out=out, gn=_gn(blk.blocks[1].block[1], b), act="mish", residual=x, res_x2=x2,
               res_weight=res_weight, res_bias=res_bias)
        return out

    x, divisor, skips = "x", 1, []
    for resnet, resnet2, downsample in model.down_modules:
        x = res_block(resnet2, res_block(resnet, x, None, divisor), None, divisor)
        skips.append(x)
        if not isinstance(downsample, torch.nn.Identity):
            divisor *= 2
            out = b.tmp(resnet2.out_channels, divisor)
            b.conv(downsample.conv, x=x, out=out, mode="down")
            x = out
    for mid in model.mid_modules:
        x = res_block(mid, x, None, divisor)
    for resnet, resnet2, upsample in model.up_modules:
        x = res_block(resnet2, res_block(resnet, x, skips.pop(), divisor), None, divisor)
        divisor //= 2
        out = b.tmp(resnet2.out_channels, divisor)
        b.conv(upsample.conv, x=x, out=out, mode="up")
        x = out
    final, output = model.final_conv[0].block, model.final_conv[1]
    if output.out_channels <= head_channels:  # one launch: the last Conv1dBlock, the output conv and the step
        b.conv(final[0], x=x, out="x", gn=_gn(final[1], b), act="mish", step=True,
               head=HeadArgs(b.pack(output.weight[..., 0]), b.pack(output.bias)))
    else:
        out = b.tmp(final[0].out_channels, divisor)
        b.conv(final[0], x=x, out=out, gn=_gn(final[1], b), act="mish")
        b.conv(output, x=out, out="x", step=True)

    enc = model.diffusion_step_encoder
    hdt = torch.float64 if dtype == torch.float64 else torch.float32  # the hoisted matmuls' dtype
    hoist = {name: b.pack(p, hdt) for name, p in [
        ("step_w1", enc[1].weight), ("step_b1", enc[1].bias), ("step_w2", enc[3].weight), ("step_b2", enc[3].bias),
    ]}
    hoist["cond_w"] = b.pack_rows([l.weight for l in b.cond_linears], hdt)
    hoist["cond_b"] = b.pack_rows([l.bias for l in b.cond_linears], hdt)
    width = hoist["cond_w"].shape[0]
    return Program(b.blocks, b.channels, hoist, width, "chi", b.sources)


def _lesson_program(model: LessonUNet1D, dtype) -> Program:
    b = _Builder(dtype)
    h = model.hidden
    b.channels["x"] = (model.action_dim, 1)
    a1, h1, a2, h2 = b.tmp(h, 1), b.tmp(h, 1), b.tmp(h, 2), b.tmp(h, 2)
    m, u, v = b.tmp(h, 2), b.tmp(h, 1), b.tmp(h, 1)
    b.conv(model.down1[0], x="x", out=a1, act="silu")
    b.conv(model.down1[2], x=a1, out=h1, act="silu", cond=(0, h))
    b.conv(model.down2[0], x=h1, out=a2, act="silu", mode="down")
    b.conv(model.down2[2], x=a2, out=h2, act="silu")
    b.conv(model.mid[0], x=h2, out=m, act="silu", cond=(0, h))
    b.conv(model.up2[0], x=m, x2=h2, out=u, act="silu", mode="up")
    b.conv(model.up1[0], x=u, x2=h1, out=v, act="silu")
    b.conv(model.up1[2], x=v, out="x", step=True)
    hdt = torch.float64 if dtype == torch.float64 else torch.float32
    hoist = {name: b.pack(p, hdt) for name, p in [
        ("time_table", model.time_embed[0].weight), ("time_w", model.time_embed[1].weight), ("time_b", model.time_embed[1].bias),
        ("obs_w1", model.obs_embed[0].weight), ("obs_b1", model.obs_embed[0].bias),
        ("obs_w2", model.obs_embed[2].weight), ("obs_b2", model.obs_embed[2].bias),
    ]}
    return Program(b.blocks, b.channels, hoist, h, "lesson", b.sources)


def build_program(model, dtype, check: bool = True, head_channels: int = 0) -> Program:
    """The program of ``model``'s network for the kernels (``check``: its structure checked first,
    ``check_structure``: about 16 ms for W2's network on this project's CPU machine, against 3
    for the rest; ``head_channels``: the widest 1x1 convolution the backend's ``conv_block``
    fuses after a block (its ``head_channels``), so that Chi's output conv joins the last block)."""
    if check:
        check_structure(model)
    if isinstance(model, ConditionalUnet1D):
        return _chi_program(model, dtype, head_channels)
    return _lesson_program(model, dtype)


def _twin(model) -> torch.nn.Module:
    """The network its class's constructor makes for the sizes read off ``model`` (on the meta
    device: no memory), which is what the fast path computes."""
    if isinstance(model, LessonUNet1D):
        return LessonUNet1D(model.action_dim, model.obs_dim, model.hidden, model.diffusion_steps)
    block = model.mid_modules[0]
    conv, norm = block.blocks[0].block[0], block.blocks[0].block[1]
    dsed = model.diffusion_step_encoder[0].dim
    cond = block.cond_encoder[1].in_features - dsed
    local = model.local_cond_encoder[0].blocks[0].block[0].in_channels if model.local_cond_encoder is not None else None
    return ConditionalUnet1D(model.final_conv[1].out_channels, local, cond or None, dsed,
                             [level[0].out_channels for level in model.down_modules], conv.kernel_size[0], norm.num_groups,
                             block.cond_predict_scale)


_MISSING = "(none)"
# Settings the program reads from the module itself (``_gn``), which may differ from the twin's.
_READ_FROM_MODULE = {torch.nn.GroupNorm: frozenset({"eps", "num_groups"})}


def _settings(module: torch.nn.Module) -> dict:
    """What a module computes besides its weights' values: its plain attributes (sizes, strides,
    padding, groups, flags; not ``training``, nor what the program reads from the module itself)
    and which of its parameters exist."""
    skip = _READ_FROM_MODULE.get(type(module), frozenset()) | {"training"}
    out = {k: v for k, v in vars(module).items() if not k.startswith("_") and k not in skip and isinstance(v, _PLAIN + (tuple,))}
    out["parameters"] = tuple(k for k, v in module._parameters.items() if v is not None)
    return out


_checked_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (_registrations then, refusal or None)


def check_structure(model) -> None:
    """``_check_structure``, its verdict kept per model until a module or a parameter is registered
    anywhere (``_registrations``; a module set in another's place is one): ``auto`` falling back
    to the reference asks on every call, and W2's network takes 16 ms to check."""
    seen = _checked_models.get(model)
    if seen is None or seen[0] != _registrations:
        try:
            _check_structure(model)
        except NotImplementedError as err:
            seen = (_registrations, str(err))
        else:
            seen = (_registrations, None)
        _checked_models[model] = seen
    if seen[1] is not None:
        raise NotImplementedError(seen[1])


def _check_structure(model) -> None:
    """Raises NotImplementedError unless ``model`` is, module for module, the network its class
    builds (``_twin``): the fast path computes that network from the weights, so a module put in
    another's place (a SiLU for a Mish, a Conv1d with other padding, a GroupNorm without affine
    weights), a setting changed in place, or a subclass with a forward of its own would give
    another network's actions with no error. ``backend="auto"`` then samples with the
    reference, which runs the model as it is. Forward hooks are looked at on every call
    (``_WeightsVersion.check_hooks``)."""
    if not isinstance(model, (ConditionalUnet1D, LessonUNet1D)):
        raise NotImplementedError(f"no fast path for {type(model).__name__}")
    kind = ConditionalUnet1D if isinstance(model, ConditionalUnet1D) else LessonUNet1D
    try:
        with torch.device("meta"):
            twin = _twin(model)
    except (AttributeError, IndexError, TypeError, ValueError) as err:
        raise NotImplementedError(f"the model does not have the structure of {kind.__name__}, which the fast backends compute ({err})") from None
    ours, theirs = dict(model.named_modules()), dict(twin.named_modules())
    for name in [*ours, *(n for n in theirs if n not in ours)]:  # the model's order: the first difference named
        where = f"module {name!r}" if name else "the model itself"
        mine, built = ours.get(name), theirs.get(name)
        if mine is None or built is None:
            raise NotImplementedError(f"{where} is {'missing' if mine is None else 'not'} in the {kind.__name__} the fast backends compute")
        cls = type(built)
        if isinstance(mine, cls) and type(mine) is not cls and type(mine).forward is not cls.forward:
            raise NotImplementedError(f"{where} is a {type(mine).__name__}, whose forward is its own; the fast backends compute {cls.__name__}'s")
        if not isinstance(mine, cls):
            raise NotImplementedError(f"{where} is a {type(mine).__name__} where the fast backends compute {kind.__name__}'s {cls.__name__}")
        want = _settings(built)
        have = {k: v for k, v in _settings(mine).items() if k in want}  # attributes of its own (a tag, say) do not count
        if have != want:
            differ = [k for k in sorted(want) if have.get(k, _MISSING) != want[k]]
            raise NotImplementedError(
                f"{where} ({type(mine).__name__}) has {', '.join(f'{k}={have.get(k, _MISSING)!r}' for k in differ)}; the fast "
                f"backends compute {kind.__name__}'s, with {', '.join(f'{k}={want[k]!r}' for k in differ)}")


def _program_tensors(p: Program) -> list[torch.Tensor]:
    ts = list(p.hoist_weights.values())
    for blk in p.blocks:
        ts += [blk.weight, blk.bias] + ([blk.gn.weight, blk.gn.bias] if blk.gn else [])
        ts += [t for t in (blk.res_weight, blk.res_bias) if t is not None]
        ts += [blk.head.weight, blk.head.bias] if blk.head is not None else []
    return ts


def hoist(p: Program, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Conditioning of every block for every step: (n, B, width), in the hoist dtype.

    timesteps: (n,) int64 on the device; cond: (B, C) flattened observations."""
    return hoisted_table(hoist_steps(p, step_inputs(p, timesteps)), hoist_obs(p, cond))


def step_inputs(p: Program, timesteps: torch.Tensor) -> torch.Tensor:
    """What ``hoist_steps`` reads of the timesteps (n,), computed once per schedule: the
    sinusoidal step embedding (n, dsed) for Chi's network, the timesteps themselves for the
    lesson's (whose table of step embeddings is a weight)."""
    if p.kind == "lesson":
        return timesteps
    w = p.hoist_weights
    dtype, dsed = w["step_w1"].dtype, w["step_w1"].shape[1]
    half = dsed // 2
    freqs = torch.exp(torch.arange(half, device=timesteps.device, dtype=dtype) * -(math.log(10000) / (half - 1)))
    arg = timesteps.to(dtype)[:, None] * freqs[None, :]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


def hoist_steps(p: Program, inputs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The part of ``hoist``'s table that depends on the step (and the weights) alone: (n, width),
    from ``step_inputs``; written into ``out`` when one is given."""
    w = p.hoist_weights
    if p.kind == "lesson":
        steps = F.silu(F.linear(w["time_table"][inputs], w["time_w"], w["time_b"]))  # (n, h)
        return steps if out is None else out.copy_(steps)
    emb = F.linear(F.mish(F.linear(inputs, w["step_w1"], w["step_b1"])), w["step_w2"], w["step_b2"])  # (n, dsed)
    cond_w = w["cond_w"][:, : emb.shape[1]]
    if out is None:
        return F.linear(F.mish(emb), cond_w, w["cond_b"])
    return torch.addmm(w["cond_b"], F.mish(emb), cond_w.t(), out=out)  # (n, width)


def hoist_obs(p: Program, cond: torch.Tensor) -> torch.Tensor:
    """The part of ``hoist``'s table that depends on the observation alone: (B, width)."""
    w = p.hoist_weights
    cond = cond.to(w[next(iter(w))].dtype)
    if p.kind == "lesson":
        return F.linear(F.silu(F.linear(cond, w["obs_w1"], w["obs_b1"])), w["obs_w2"], w["obs_b2"])  # (B, h)
    return F.linear(F.mish(cond), w["cond_w"][:, w["step_w1"].shape[1]:])  # (B, width)


def hoisted_table(steps: torch.Tensor, obs: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``hoist``'s table from its two parts: (n, width) and (B, width) -> (n, B, width),
    written into ``out`` (a contiguous buffer of that shape) when one is given."""
    if out is not None:
        return torch.add(steps[:, None, :], obs[None, :, :], out=out)
    return (steps[:, None, :] + obs[None, :, :]).contiguous()


def run_blocks(p: Program, conv_block, acts: dict, table_row: torch.Tensor, step, model_output=None) -> None:
    """One network evaluation: every block of ``p`` through the backend's ``conv_block``.

    acts: activation name -> (B, C, T) tensor ("x" is the sample viewed as (B, A, T));
    table_row: (B, width) conditioning of this step; step: the StepArgs of the last block, or
    None to write the network's output to ``model_output`` (B, A, T) instead."""
    for blk in p.blocks:
        cols = lambda c: None if c is None else table_row[:, c[0] : c[0] + c[1]]
        conv_block(
            acts[blk.x], blk.weight, blk.bias,
            x2=acts[blk.x2] if blk.x2 else None, mode=blk.mode,
            gn=blk.gn, act=blk.act,
            cond=cols(blk.cond), cond_scale=cols(blk.scale),
            residual=acts[blk.residual] if blk.residual else None,
            res_x2=acts[blk.res_x2] if blk.res_x2 else None,
            res_weight=blk.res_weight, res_bias=blk.res_bias,
            **({"head": blk.head} if blk.head is not None else {}),  # only the backends that fuse one take it
            step=step if blk.step else None,
            out=(None if step is not None else model_output) if blk.step else acts[blk.out],
        )


# -- the sampler: static buffers, the loop, the graph cache -------------------------------------------


# Submodules and parameters registered on any module of this process since import (global
# hooks of torch's): while it stands still, a model's tree of modules and their parameters are
# the ones a sampler listed before.
_registrations = 0


def _count_registration(module, name, value):
    global _registrations
    _registrations += 1


torch.nn.modules.module.register_module_module_registration_hook(_count_registration)
torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)


_data_ptr, _version_of = torch.Tensor.data_ptr, operator.attrgetter("_version")


class _WeightsVersion:
    """What identifies a model's weights at one moment: the model, and each parameter's storage
    and version counter (bumped by every in-place write: an optimizer step, ``load_state_dict``); a
    parameter replaced by another (``assign=True``, a module attribute set) shows as another
    storage. The model's parameters are listed again only after a submodule or a parameter was
    registered somewhere (which setting a module's attribute to a module or a parameter does);
    a ``sample()`` call waits for this check before its graph replays: on this project's CPU
    machine, W2's 148 parameters took 23 µs of host time a call read from the list (19 since,
    their pointers and versions read by ``map``), 69 read from their 234 modules' tables (170
    walking the tree each time, as at first). Writing a module's ``_parameters`` table directly
    is not seen, nor is an in-place write through ``.data`` (``p.data = t`` moves the storage,
    and is): where the program computes in the model's dtype, the sample reads it anyway
    (``FastSampler._build``)."""

    def __init__(self, policy):
        self.policy = policy  # its model is read on every call: a model set in its place counts too
        self._listed = (None, None)  # (the model listed, _registrations then)
        self._params: list = []
        self._modules = self._structure = None  # the listed model's modules (held), and a count of their changes
        self._hooks: list = []  # the listed modules' tables of forward hooks, and torch's global ones

    def __call__(self) -> tuple:
        model = self.policy.model
        if self._listed[0] is not model or self._listed[1] != _registrations:
            modules = tuple(model.modules())
            self._params = [p for m in modules for p in m._parameters.values() if p is not None]
            self._hooks = [h for m in modules for h in (m._forward_pre_hooks, m._forward_hooks)] + _GLOBAL_HOOKS
            if self._modules is None or len(modules) != len(self._modules) or any(a is not b for a, b in zip(modules, self._modules)):
                self._structure = (self._structure or 0) + 1  # a module put in another's place (one without weights too)
                self._modules = modules
            self._listed = (model, _registrations)
        # the model itself too: another one sharing the same parameters' memory is another network
        return model, self._structure, tuple(map(_data_ptr, self._params)), tuple(map(_version_of, self._params))

    def check_hooks(self) -> None:
        """Raises NotImplementedError where a forward hook (or pre-hook) is registered on a module
        of the model listed by the last call, or on every module (torch's global hooks): the
        reference calls the model, which runs them, and a hook may change what a module takes or
        gives (``torch.nn.utils.prune``'s pre-hook writes the weight it multiplies); the fast
        backends compute the network from its weights and run none, so its actions would differ
        with no error. ``auto`` then samples with the reference. Hooks are registered in place, in
        tables each module keeps, so they are looked at on every call: 2.5 µs for W2's 234
        modules on this project's CPU machine."""
        if not any(self._hooks):
            return
        hooked = [f"module {name!r}" if name else "the model" for name, m in self.policy.model.named_modules() if m._forward_pre_hooks or m._forward_hooks]
        where = f"{hooked[0]}{f' (and {len(hooked) - 1} more)' if len(hooked) > 1 else ''} has a" if hooked else "torch has a global"
        raise NotImplementedError(
            f"{where} forward hook, which the fast backends do not run (they compute the network from its weights); "
            "remove it, or sample with backend='reference', which calls the model")


# torch's forward hooks and pre-hooks for every module (register_module_forward_hook): tables
# torch keeps and registers into in place.
_GLOBAL_HOOKS = [torch.nn.modules.module._global_forward_pre_hooks, torch.nn.modules.module._global_forward_hooks]


# What set_timesteps sets, which every sample() calls: not part of the schedule a capture keeps.
_SET_BY_SET_TIMESTEPS = frozenset({"timesteps", "num_inference_steps", "_prev"})
_PLAIN = (bool, int, float, str, type(None))


def _schedule_state(scheduler) -> tuple:
    """What identifies the schedule a capture keeps (its coefficient table, noise draws, clip
    bound and timesteps): the scheduler object and its settings, those set_timesteps sets aside;
    a tensor (or any other object) by its identity and version counter, which an in-place write
    bumps. Changing a setting (``scheduler.clip_sample = False``), writing one of its tensors or
    putting another scheduler in the policy's changes it. Identities are compared only while
    their objects are held (``FastSampler`` holds the scheduler and its attributes' values)."""
    return (id(scheduler), type(scheduler)) + tuple(
        (k, v if isinstance(v, _PLAIN) else (id(v), getattr(v, "_version", None)))
        for k, v in vars(scheduler).items()
        if k not in _SET_BY_SET_TIMESTEPS
    )


def check_scheduler(scheduler) -> None:
    """Raises NotImplementedError where the scheduler's ``step`` is not its class's: the fast path
    computes the steps from the class's coefficient table (``step_coefficients``), so a subclass
    with a step of its own would be sampled with the class's step, with no error. ``auto`` then
    samples with the reference, which calls the scheduler's own step."""
    base = next((c for c in (DDIMScheduler, DDPMScheduler, LessonDDIMScheduler) if isinstance(scheduler, c)), None)
    if base is not None and type(scheduler).step is not base.step:
        raise NotImplementedError(
            f"the scheduler is a {type(scheduler).__name__}, whose step is its own; the fast backends compute "
            f"{base.__name__}'s step from its coefficient table")


@dataclass
class _Capture:
    """Static buffers (and, on CUDA, the graph) for one (batch size, steps)."""

    cond: torch.Tensor
    x: torch.Tensor
    noise: torch.Tensor  # (n, B, T, A): zero rows where a step draws no noise
    draws: list[bool]
    coefs: torch.Tensor
    clip_range: float
    acts: dict
    step_inputs: torch.Tensor  # step_inputs of the timesteps
    steps: torch.Tensor  # hoist_steps of them: made again when the weights change, or on every sample (_follow_weights)
    table: torch.Tensor | None = None  # the hoisted conditioning, a static buffer (chains only)
    chains: list | None = None  # the recorded loop (a backend's chains, launched in order), or None
    graph: object = None


class FastSampler:
    """A policy's network packed for one backend and precision, with its capture cache."""

    def __init__(self, policy, conv_block, chain=None):
        """chain: None, or a backend's recorder factory (device -> an object with the
        ``conv_block`` signature and ``finish()`` -> an object with ``launch()``): every
        step's network evaluation is then recorded once per capture, and the loop runs as one
        launch."""
        check_precision(policy.precision)  # as the policy's constructor does: an attribute set later is checked here
        self.policy = policy
        self.chain = chain
        # tf32: float32 weights and activations, products on the tensor cores where the backend has them
        self.conv_block = functools.partial(conv_block, tf32=True) if policy.precision == "tf32" else conv_block
        self.head_channels = getattr(conv_block, "head_channels", 0)  # see build_program
        model_dtype = policy.dtype
        self.dtype = torch.float64 if model_dtype == torch.float64 else (torch.bfloat16 if policy.precision == "bf16" else torch.float32)
        self._build()
        self._weights_version = _WeightsVersion(policy)
        self._version = self._weights_version()
        self._captures: OrderedDict[tuple, _Capture] = OrderedDict()  # least recently used first
        self._evicted = False  # whether a capture was dropped for room (warned about once)
        self._schedule = self._schedule_held = None  # the captures' _schedule_state, and its objects

    def _build(self, program: Program | None = None) -> None:
        """The program (``build_program``) the kernels read. Where it computes in the model's own
        dtype (float32, tf32, a float64 or bfloat16 model), its few packed copies (the transposed
        convolutions' weights, the concatenated conditioning layers') and the step part of the
        hoisted conditioning are made again at the start of every sample, inside its graph
        (``_follow_weights``): a write to a parameter through ``.data``, which moves no version
        counter (diffusers' ``EMAModel.copy_to``), is then read as the reference reads it. In
        bfloat16 from a float32 model every weight is a copy, and making them all again would add
        to each sample more bytes than a whole bfloat16 evaluation reads: they are made again
        when a version counter moves."""
        self.program = program or build_program(self.policy.model, self.dtype, head_channels=self.head_channels)
        self._live = self.dtype == self.policy.dtype

    def _refresh_weights(self) -> None:
        """Follows the model's weights when they changed since the last call (``_WeightsVersion``).
        Where the model or one of its modules is another, or a parameter's memory is elsewhere (a
        parameter replaced by another, ``module.to()``), the program is built anew and the
        captures made again, since their graphs hold the old addresses and sizes (the old memory
        is never written: its parameter may live on). Where only version counters moved (an
        optimizer step, ``load_state_dict``, an EMA update), the parameters read in place are up
        to date already, and the packed copies are made again in place: by the next sample itself
        where the program follows the weights on every sample (``_build``), here otherwise."""
        version = self._weights_version()
        self._weights_version.check_hooks()  # before the step noise is drawn: auto's fallback draws it from the same state
        if version == self._version:
            return
        if version[:3] != self._version[:3]:
            # checked again where the model or one of its modules is another: not after every optimizer step
            self._build(build_program(self.policy.model, self.dtype, check=version[:2] != self._version[:2],
                                      head_channels=self.head_channels))
            self._captures.clear()
        elif not self._live:
            self._remake_copies(self._captures.values())
        self._version = version

    def _follow_weights(self, cap: _Capture | None = None) -> None:
        """Where the program follows the weights on every sample (``_build``): its packed copies,
        and ``cap``'s step part of the conditioning, made again from the parameters as they are
        now. Part of the capture: no host work on a replay."""
        if self._live:
            self._remake_copies([cap] if cap is not None else [])

    def _remake_copies(self, caps) -> None:
        """The program's packed copies, and each capture's step part of the conditioning (hoisted
        at capture), made again from the parameters as they are now."""
        copy_sources(self.program.sources)
        with torch.no_grad():
            for cap in caps:
                hoist_steps(self.program, cap.step_inputs, out=cap.steps)

    def _activations(self, x: torch.Tensor) -> dict:
        """Buffers for every activation of the program, for samples like x (B, T, A)."""
        B, T, _ = x.shape
        acts = {"x": x.transpose(1, 2)}
        for name, (c, div) in self.program.channels.items():
            if name != "x":
                acts[name] = torch.empty(B, c, T // div, device=x.device, dtype=self.dtype)
        return acts

    def denoise(self, x: torch.Tensor, timestep: int, cond: torch.Tensor) -> torch.Tensor:
        """One network evaluation on the fast path, uncaptured: x (B, T, A), cond (B, C) ->
        the model output (B, T, A), as ``policy.denoise`` gives it. For tests and profiling."""
        with _DeviceOrder.of(x.device), _own_modes(x.device):
            self._refresh_weights()
            self._follow_weights()
            acts = self._activations(x)
            table = hoist(self.program, torch.tensor([timestep], device=x.device), cond)
            out = torch.empty_like(x).transpose(1, 2)
            run_blocks(self.program, self.conv_block, acts, table[0], None, model_output=out)
        return out.transpose(1, 2)

    def _capture(self, B: int, n_steps: int, device) -> _Capture:
        sched, policy = self.policy.scheduler, self.policy
        sched.set_timesteps(n_steps)
        table = sched.step_coefficients(**policy.step_kwargs)
        draws = sched.noise_draws(**policy.step_kwargs)
        T, A = policy.chunk_size, policy.action_dim
        x = torch.zeros(B, T, A, device=device, dtype=policy.dtype)
        acts = self._activations(x)
        inputs = step_inputs(self.program, sched.timesteps.to(device))
        cap = _Capture(
            cond=torch.zeros(B, policy.obs_dim * policy.n_obs_steps, device=device, dtype=policy.dtype),
            x=x,
            noise=torch.zeros(len(draws), B, T, A, device=device, dtype=policy.dtype),
            draws=draws,
            coefs=table.to(device),
            clip_range=sched.clip_range,
            acts=acts,
            step_inputs=inputs,
            steps=hoist_steps(self.program, inputs),
        )
        if self.chain is not None:
            cap.chains = self._record_chains(cap)
        if device.type == "cuda":
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._loop(cap)  # warm-up: compiles and autotunes the kernels outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            cap.graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' CUDA work (another policy's sample()) goes on meanwhile
            with torch.cuda.graph(cap.graph, capture_error_mode="thread_local"):
                self._loop(cap)
        return cap

    def _steps(self, cap: _Capture):
        for i, draws in enumerate(cap.draws):
            yield i, StepArgs(cap.acts["x"], cap.noise[i].transpose(1, 2) if draws else None, cap.coefs[i], cap.clip_range)

    def _record_chains(self, cap: _Capture) -> list | None:
        """Every step's evaluation recorded into one chain, on the capture's static buffers (the
        conditioning table becomes one): the whole loop is one launch (nothing runs between
        two evaluations: the step noise is drawn before). None, with the per-block launches
        kept, when a block does not fit the chain."""
        cap.table = hoisted_table(cap.steps, hoist_obs(self.program, cap.cond))
        recorder = self.chain(cap.x.device)
        try:
            for i, step in self._steps(cap):
                run_blocks(self.program, recorder.conv_block, cap.acts, cap.table[i], step)
        except NotImplementedError:
            cap.table = None
            return None
        return [recorder.finish()]

    def _loop(self, cap: _Capture) -> None:
        self._follow_weights(cap)
        obs = hoist_obs(self.program, cap.cond)  # the step part is cap.steps
        if cap.chains is not None:
            hoisted_table(cap.steps, obs, out=cap.table)  # the chains read this static buffer
            for chain in cap.chains:
                chain.launch()
            return
        table = hoisted_table(cap.steps, obs)
        for i, step in self._steps(cap):
            run_blocks(self.program, self.conv_block, cap.acts, table[i], step)

    def _make_room(self, limit) -> None:
        """Drops the least recently used captures until one more fits under ``limit``
        (``DiffusionPolicy.max_captures``), with a warning the first time: each holds a CUDA
        graph and its buffers, and a caller whose batch size or step count keeps changing would
        otherwise keep one per value for as long as the policy lives."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_captures must be an int >= 1, got {limit!r}")
        while len(self._captures) >= limit:
            (B, n_steps, *_), _ = self._captures.popitem(last=False)
            if not self._evicted:
                self._evicted = True
                _warn_callers_line(
                    f"the fast sampler keeps at most max_captures={limit} captures (one per batch size, step count, "
                    f"eta and chunk size); it dropped the least recently used (batch {B}, {n_steps} steps) and will "
                    "capture it again if asked. Raise policy.max_captures, or pad batches to fewer sizes, if this "
                    "repeats (warned once per sampler)")

    def run(self, cond: torch.Tensor, x: torch.Tensor, n_steps: int, generator) -> torch.Tensor:
        """Denoises x (B, T, A) under cond (B, C); same contract as the reference loop. Any
        thread, any stream (``_DeviceOrder``)."""
        with _DeviceOrder.of(x.device), _own_modes(x.device):
            return self._run(cond, x, n_steps, generator)

    def _run(self, cond: torch.Tensor, x: torch.Tensor, n_steps: int, generator) -> torch.Tensor:
        self._refresh_weights()
        policy = self.policy
        schedule = _schedule_state(policy.scheduler)
        if schedule != self._schedule:  # the captures keep another schedule: never replayed again
            check_scheduler(policy.scheduler)
            self._captures.clear()
            self._schedule, self._schedule_held = schedule, (policy.scheduler, *vars(policy.scheduler).values())
        key = (x.shape[0], int(n_steps), x.device, policy.eta, policy.chunk_size)
        cap = self._captures.get(key)
        if cap is None:
            self._make_room(policy.max_captures)
            cap = self._captures[key] = self._capture(x.shape[0], int(n_steps), x.device)
        else:
            self._captures.move_to_end(key)
        # The step noise, drawn in the order (and from the generator) the reference draws it.
        randn_rows(cap.noise, [i for i, draws in enumerate(cap.draws) if draws], generator)
        cap.cond.copy_(cond)
        cap.x.copy_(x)
        if cap.graph is not None:
            cap.graph.replay()
        else:
            self._loop(cap)
        return cap.x.clone()


# Frames a warning looks past for its caller's line: this package's, and torch's (the
# ``torch.no_grad()`` decorator around ``sample()``).
_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (sys.modules[__package__], torch))


def _warn_callers_line(message: str) -> None:
    """A warning shown at the first frame outside this package and torch (the caller's
    ``sample()`` line), however deep in them it is raised."""
    frame, level = sys._getframe(1), 2  # stacklevel 2: the frame that called this one
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_OWN_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


class SamplerKey(NamedTuple):
    """What a policy's fast sampler is made for (the key of its ``_fast_samplers``)."""

    backend: str
    precision: str
    device: torch.device
    dtype: torch.dtype
    chain: object  # see FastSampler


def sampler_for(policy, backend: str, conv_block, chain=None) -> FastSampler:
    """The policy's FastSampler for (backend, precision, device, model dtype, chain), built on
    first use (``chain``: see FastSampler)."""
    key = SamplerKey(backend, policy.precision, policy.device, policy.dtype, chain)
    cache = policy.__dict__.setdefault("_fast_samplers", {})
    sampler = cache.get(key)
    if sampler is None:
        with _DeviceOrder.of(policy.device), _own_modes(policy.device):  # two threads' first calls build one sampler, not one each
            sampler = cache.get(key)
            if sampler is None:
                drop_stale_samplers(policy)
                sampler = cache[key] = FastSampler(policy, conv_block, chain)
    return sampler


def drop_stale_samplers(policy) -> None:
    """Drops the policy's samplers made for another device or dtype than its model's now: they
    hold the weights' old memory (a float32 program reads the parameters' own, and keeps it
    alive once ``model.to()`` has moved them) and their captures, and would only be used again
    after a move back, when they would be built anew anyway. Called when a sampler is built and
    by ``DiffusionPolicy.to``."""
    cache = policy.__dict__.get("_fast_samplers")
    if cache:
        now = (policy.device, policy.dtype)
        for key in [k for k in cache if (k.device, k.dtype) != now]:
            del cache[key]


_NO_CONTEXT = contextlib.nullcontext()


def _own_modes(device: torch.device):
    """The modes the fast path works in, whatever its caller's, so that what it keeps from one
    call to the next (the packed weights, a capture's static buffers, graph and step
    conditioning) is the same whichever call made it:
    - outside inference mode: made under a caller's ``torch.inference_mode()`` they would be
      inference tensors, which no call outside it may write ("Inplace update to inference tensor
      outside InferenceMode": a first ``sample()`` in inference mode broke every later one);
    - without autocast: under a caller's ``torch.autocast`` the hoisted conditioning came out in
      bfloat16, and the step part a capture keeps stayed so for every later call (1.4e-3 from
      the reference after the autocast region had ended, against SPEC.md's 1e-4); a fast
      backend's precision is the policy's ``precision`` alone;
    - gradients off;
    - on the policy's GPU as the current device (a policy on cuda:1 while cuda:0 is current):
      Triton launches, a capture's side stream and its graph go to the current device."""
    elsewhere = device.type == "cuda" and torch.cuda.current_device() != device.index
    if elsewhere or torch.is_inference_mode_enabled() or torch.is_autocast_enabled(device.type):
        return _callers_modes_off(device, elsewhere)
    return _NO_CONTEXT


@contextlib.contextmanager
def _callers_modes_off(device: torch.device, elsewhere: bool):
    # inference_mode(False) alone would turn gradients on
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
        with torch.cuda.device(device) if elsewhere else _NO_CONTEXT:
            yield


class _DeviceOrder:
    """One order for the fast path's work on a device, whatever thread or CUDA stream asks for
    it: a call holds the device's lock while it queues its work (on the CPU, while it does it),
    and a call on another stream than the device's last call waits for that call's work first
    (its output's copy included). No two calls' launches overlap on the GPU, since they share
    the captures' static buffers and the device's arrival counters (``arrival_counters``).
    Without it, two threads sampling one policy got each other's actions (and Triton's CPU
    interpreter, which is not thread-safe, failed). Use: ``with _DeviceOrder.of(device):``."""

    _orders: dict = {}
    _making = threading.Lock()

    @classmethod
    def of(cls, device: torch.device) -> "_DeviceOrder":
        order = cls._orders.get(device)
        if order is None:
            with cls._making:
                order = cls._orders.setdefault(device, cls(device))
        return order

    def __init__(self, device: torch.device):
        self.device = device
        self._lock = threading.RLock()  # a call may build a sampler, then run it
        self._stream = None  # the CUDA stream of the device's last call

    def __enter__(self) -> None:
        self._lock.acquire()
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            if self._stream is not None and stream != self._stream:
                stream.wait_stream(self._stream)
            self._stream = stream

    def __exit__(self, *exc) -> None:
        self._lock.release()
