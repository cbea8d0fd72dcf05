"""conv_block on the CUDA backend: the Python front of ``torch.ops.dp_fast.conv_block``
(kernels/conv_block.cu, bound in csrc/conv_block_cuda.cpp).

Same signature and contract as the Triton kernel's ``conv_block`` (``dp_fast/triton/conv_block.py``
has the formula; ``dp_fast.ops.conv_block.conv_block_ref`` is the PyTorch twin). This module
checks the call, plans the tiling (below) and launches the operator on the current stream.

The plan, for a batch-1 control loop where reading the weights is the cost: a CTA owns
``nc`` columns (whole sequences: ``nc // t_pad`` batch elements of ``t_pad`` steps) and
``rows_per_cta(nc)`` output channels: when the whole batch fits in 4 or 8 columns (batch 1 at
T <= 8), 16 or 8 rows reduced the GEMV way (a thread per reduction index, the input value
gathered once and every row's weight streamed past it); otherwise 16 rows (8 when a tile holds
more than 16 time steps) in the tiled reduction. The reduction over C_in * K is
split over CTAs to fill two CTAs per SM (``__launch_bounds__(256, 2)``) in one wave
(``dp_fast.ops.conv_block.split_reduction``; one CTA per SM for the chain), so every SM streams
a share of the weights; a region (a GroupNorm group, or one tile) spanning several CTAs is finished by the
last one to arrive. On sm_90 and later each launch is a programmatic dependent launch whose
CTAs prefetch the start of their weights into L2 while the previous block finishes
(``dp_fast.ops.conv_block.dependent_launch``; off with DP_FAST_PDL=0). Limits: T_out <= 64;
a GroupNorm group of at most 4096 / nc channels (2048 / nc in float64). Calls outside them
raise NotImplementedError. A ``head`` (Chi's output 1x1 conv, at most
``ops.conv_block.HEAD_MAX_CHANNELS`` outputs) is finished by the CTAs that finish the block's
regions: each adds its region's share of the head's products, and the last region of a batch
tile sums the shares and steps (kernels/conv_block.cuh).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from .. import _ext
from ..ops.conv_block import (ACTS, MODES, PREFETCH_BYTES, GroupNormArgs, HeadArgs, ProbeRecords, StepArgs, _check,
                              arrival_counters, check_call, dependent_launch, head_channels, sm_count, split_reduction)

MAX_T = 64
THREADS_PER_CTA = 256  # kConvThreadsPerCta
# CTAs an SM holds at once (kernels/conv_block.cu's launch bounds), for split_reduction
TARGET_PROGRAMS_PER_SM = int(os.environ.get("DP_FAST_PROGRAMS_PER_SM", "2"))
CHAIN_PROGRAMS_PER_SM = 1  # the chain kernel's grid: one CTA per SM
MIN_CHUNKS_PER_SPLIT = int(os.environ.get("DP_FAST_MIN_CHUNKS_PER_SPLIT", "2"))  # the shortest split, in chunks (a large value: no split)

_MODE_IDS = {m: i for i, m in enumerate(MODES)}
_ACT_IDS = {a: i for i, a in enumerate(ACTS)}


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


KERNEL_GEMV_COLUMNS = 8  # kConvGemvMaxColumns in kernels/conv_block.cuh: tiles this narrow reduce the GEMV way
GEMV_ACCUMULATORS = 64  # kConvGemvAccumulators: rows x columns of a GEMV tile
# The plan gives a batch of at most this many columns one GEMV tile (0: never; the same
# environment knob as the Triton backend's, for A/B runs; at most KERNEL_GEMV_COLUMNS).
GEMV_MAX_COLUMNS = min(KERNEL_GEMV_COLUMNS, int(os.environ.get("DP_FAST_GEMV_MAX_COLUMNS", str(KERNEL_GEMV_COLUMNS))))


def rows_per_cta(nc: int) -> int:  # kConvRowsPerCta
    return GEMV_ACCUMULATORS // nc if nc <= KERNEL_GEMV_COLUMNS else (16 if nc == 16 else 8)


def chunk(dtype: torch.dtype, nc: int) -> int:  # kConvChunk
    return THREADS_PER_CTA if nc <= KERNEL_GEMV_COLUMNS else (64 if dtype == torch.float64 else 128)


def max_region_elements(dtype: torch.dtype) -> int:  # kConvMaxRegionElements
    return 2048 if dtype == torch.float64 else 4096


# Both reductions stream their weights through a ring of cp.async copies in shared memory
# (kernels/conv_block.cuh: several chunks in flight per CTA in 16-byte pieces, none held in registers;
# in a launch of its own the first stages are asked for before the wait for the previous
# launch), where every weight row is whole 16-byte pieces (C_in * K a multiple of 4 in float32,
# 8 in bfloat16); the operator runs weights that do not start on a 16-byte boundary (a view into
# a larger tensor) through registers instead. A staged chain entry's ring is its CTA's first
# tile's weights, copied whole while the CTA waits at the grid barrier before the entry (at most
# RING_BYTES). DP_FAST_CUDA_RING=0 keeps the weights in registers (the next reduction index's or
# chunk's loaded ahead; a staged entry's asked of L1), for A/B runs. Not yet timed on a GPU.
RING = os.environ.get("DP_FAST_CUDA_RING", "1").strip() != "0"
RING_PIECE_BYTES = 16
RING_BYTES = 65536  # kConvRingBytes


def ring_fits(R: int, RR: int, dtype: torch.dtype) -> bool:
    """Whether weight rows of ``R`` values (and the 1x1 residual's ``RR``) can stream through the
    ring: whole 16-byte pieces (the tensors' alignment is the operator's to check)."""
    return (R * dtype.itemsize) % RING_PIECE_BYTES == 0 and (RR * dtype.itemsize) % RING_PIECE_BYTES == 0


def plan(B: int, T_out: int, C_out: int, R: int, RR: int, groups: int | None, dtype: torch.dtype, sms: int,
         pdl: bool = False, programs_per_sm: int | None = None) -> list[int]:
    """The op's ``config`` (see csrc/library.cpp) for one call; ``pdl``: a programmatic
    dependent launch that prefetches PREFETCH_BYTES of weights per CTA (dp_fast.ops.conv_block);
    ``programs_per_sm``: CTAs per SM at once (default TARGET_PROGRAMS_PER_SM; the chain's 1)."""
    programs_per_sm = TARGET_PROGRAMS_PER_SM if programs_per_sm is None else programs_per_sm
    if T_out > MAX_T:
        raise NotImplementedError(f"the cuda backend's conv_block handles T_out <= {MAX_T}, got {T_out}")
    t_pad = _pow2(T_out)
    whole = max(4, _pow2(B * t_pad))  # the whole batch in one tile of few columns: the GEMV reduction
    nc = whole if whole <= GEMV_MAX_COLUMNS else max(16, t_pad)
    bb = nc // t_pad
    rows = rows_per_cta(nc)
    if groups:
        cpg = C_out // groups
        tpg = _cdiv(cpg, rows)
        region = _pow2(tpg * rows)
        if region * nc > max_region_elements(dtype):
            raise NotImplementedError(
                f"the cuda backend's conv_block handles GroupNorm groups of at most {max_region_elements(dtype) // nc} "
                f"channels at T_out={T_out}, got {cpg}")
        co_tiles = groups * tpg
    else:
        cpg, tpg, region, co_tiles = 0, 1, rows, _cdiv(C_out, rows)
    n_tiles = _cdiv(B, bb)
    chunks = _cdiv(R, chunk(dtype, nc))
    split, per = split_reduction(co_tiles * n_tiles, chunks, programs_per_sm * sms, MIN_CHUNKS_PER_SPLIT)
    res_per = _cdiv(_cdiv(RR, chunk(dtype, nc)), split) if RR else 0
    return [0, 0, cpg, nc, t_pad, bb, tpg, region, split, per, res_per, co_tiles, n_tiles, int(pdl),
            PREFETCH_BYTES if pdl else 0, 0, int(RING and ring_fits(R, RR, dtype))]


# Staged chain entries (kernels/conv_block.cuh): a chain runs a block without GroupNorm or a 1x1
# residual conv whose whole batch fits one tile (the lesson's U-Net at batch 1) from its input
# copied to shared memory, in row tiles over the whole reduction, without split partials.
# Off by default: timed on the H100 (2026-11-27, one call, W1's chain, us per evaluation) the
# staged entries took 104.4 against 88.8 on the tiled path (no run of one within the other's
# range). DP_FAST_CUDA_STAGED=1 turns them on (for A/B runs; the flagged chain needs them).
STAGED = os.environ.get("DP_FAST_CUDA_STAGED", "0").strip() == "1"
STAGED_BYTES = 36864  # kConvStagedBytes
# Output channels per staged tile: 0 (the default) takes GEMV_ACCUMULATORS / nc, the rows the
# kernel's accumulators hold (4 at 16 columns: the lesson's 256 channels on 64 CTAs), since a
# tile of fewer rows multiplies zeros for the rest and every CTA with a tile stages the whole
# input; halved while a tile's weights exceed STAGED_TILE_BYTES and the grid has CTAs to spare
# (a block whose weights stream from DRAM, e.g. the PushT U-Net's down- and upsampling, is
# spread over more SMs). n > 0 takes n (at most that), ceil(C_out / grid) at least, for A/B runs.
STAGED_ROWS = int(os.environ.get("DP_FAST_CUDA_STAGED_ROWS", "0"))
STAGED_TILE_BYTES = 32768


def staged_plan(config: list[int], C_in: int, T_in: int, C_out: int, K: int, dtype: torch.dtype, grid: int,
                gn: bool, res_conv: bool) -> list[int] | None:
    """``config`` (a ``plan``) as a staged chain entry's for a grid of ``grid`` CTAs: row tiles of
    GEMV_ACCUMULATORS / nc channels or fewer (STAGED_ROWS); or None for a block the staged path
    does not take (then the chain runs it tiled)."""
    nc, bb, n_tiles = config[3], config[5], config[12]
    acc_bytes = 8 if dtype == torch.float64 else 4
    if (not STAGED or gn or res_conv or nc > CHAIN_MAX_COLUMNS or n_tiles != 1
            or C_in * (bb * T_in + 1) * acc_bytes > STAGED_BYTES):
        return None
    most = GEMV_ACCUMULATORS // nc
    if STAGED_ROWS:
        rows = min(most, max(STAGED_ROWS, _cdiv(C_out, grid)))
    else:
        rows = most
        while rows > 1 and rows * C_in * K * dtype.itemsize > STAGED_TILE_BYTES and _cdiv(C_out, rows // 2) <= grid:
            rows //= 2
    staged = list(config)
    staged[6:13] = [1, rows, 1, _cdiv(C_in * K, chunk(dtype, nc)), 0, _cdiv(C_out, rows), 1]  # tpg .. n_tiles
    # staged; its ring: a CTA's first tile's weights copied whole to shared memory (cp.async)
    # while it waits at the grid barrier before the entry, where they fit RING_BYTES
    staged[15] = 1
    staged[16] = int(RING and ring_fits(C_in * K, 0, dtype) and rows * C_in * K * dtype.itemsize <= RING_BYTES)
    return staged


def _operator(device: torch.device, name: str = "conv_block"):
    """The operator ``name`` (conv_block, conv_block_params, conv_block_chain) of
    torch.ops.dp_fast, CUDA devices only (the tests put the kernel's CPU emulation here,
    tests/emulation/)."""
    _check(device.type == "cuda", f"the cuda backend's {name} runs on a CUDA device, got tensors on {device}")
    return getattr(_ext.ops(), name)


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
    head: HeadArgs | None = None,
    step: StepArgs | None = None,
    out: torch.Tensor | None = None,
    tf32: bool = False,
) -> torch.Tensor:
    """The fused block on CUDA (shapes as the Triton ``conv_block``, ``head`` included: a 1x1
    convolution of the block's output, finished by the CTAs that finish its regions). ``tf32`` is
    accepted for the common signature; these kernels multiply on the CUDA cores, so it changes
    nothing."""
    args, c = _operator_args(x, weight, bias, x2=x2, mode=mode, gn=gn, act=act, cond=cond, cond_scale=cond_scale,
                             residual=residual, res_x2=res_x2, res_weight=res_weight, res_bias=res_bias, head=head, step=step,
                             out=out, pdl=dependent_launch(x.device))
    _operator(x.device)(*args)
    return c.out


conv_block.head_channels = head_channels()  # fused into the last block: dp_fast._fastpath.build_program


def _operator_args(x, weight, bias, *, x2, mode, gn, act, cond, cond_scale, residual, res_x2, res_weight, res_bias, head, step,
                   out, pdl, prefetch=None, programs_per_sm=None, staged_grid=None, scratch=torch.empty):
    """The checked call's operator arguments (with its plan and scratch) and its shapes.
    ``prefetch``: the weight bytes per CTA to prefetch (default: PREFETCH_BYTES with ``pdl``);
    ``programs_per_sm``: as ``plan``'s; ``staged_grid``: a chain's grid, for a staged entry
    where the block allows one (``staged_plan``; never with a head); ``scratch``: allocates the
    split partials and the head's shares (``torch.empty``'s signature)."""
    c = check_call(x, weight, bias, x2=x2, mode=mode, gn=gn, act=act, cond=cond, cond_scale=cond_scale, residual=residual,
                   res_x2=res_x2, res_weight=res_weight, res_bias=res_bias, step=step, out=out, max_t=MAX_T, head=head)
    RR = c.CR1 + c.CR2 if c.res == "conv" else 0
    config = plan(c.B, c.T_out, c.C_out, c.C_in * c.K, RR, gn.groups if gn else None, weight.dtype, sm_count(x.device), pdl,
                  programs_per_sm)
    config[0], config[1] = _MODE_IDS[mode], _ACT_IDS[act]
    if staged_grid is not None and head is None:
        config = staged_plan(config, c.C_in, c.T_in, c.C_out, c.K, weight.dtype, staged_grid, gn is not None,
                             c.res == "conv") or config
    if prefetch is not None:
        config[14] = prefetch
    split, tpg, n_tiles, nc = config[8], config[6], config[12], config[3]
    regions = config[11] // tpg
    # the split partials, then the head's shares (regions x batch tiles x A x nc); the regions'
    # arrival counters, then the head's (one per batch tile): csrc/conv_block_params.h
    partials = (2 if RR else 1) * split * n_tiles * c.C_out * nc if tpg * split > 1 else 0
    shares = regions * n_tiles * c.C_head * nc if head is not None else 0
    if partials or shares:
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        parts = scratch((partials + shares,), dtype=acc, device=x.device)
        counters = arrival_counters(x.device, regions * n_tiles + (n_tiles if head is not None else 0))
    else:
        parts = counters = bias  # unused
    args = (
        x, x2, weight, bias, gn.weight if gn else None, gn.bias if gn else None, cond, cond_scale,
        residual, res_x2, res_weight if c.res == "conv" else None, res_bias if c.res == "conv" else None,
        step.sample if step else None, step.noise if step else None, step.coefs if step else None,
        c.out, parts, counters, config,
        [float(gn.eps) if gn else 0.0, float(step.clip_range) if step else math.inf],
    )
    if head is not None:
        args += (head.weight, head.bias)
    return args, c


# -- the chain: the whole sampling loop in one launch ---------------------------------------------

# Whether the CUDA backend's sampler runs the loop as one chain launch instead of one launch per
# block, where the caller does not say: only with DP_FAST_CUDA_CHAIN=1. On the H200 (2026-11-26,
# first run) the chain, then one launch per evaluation, took W1 from 90 to 76 µs per evaluation
# and W2 from 469 to 616; in the second run, the whole loop in one launch with staged entries,
# W1 took 104 µs with grid barriers and 138-157 with the flagged exchange, against 77 for a
# launch per block, now the default for both networks (bench/results/README.md).
CHAIN = os.environ.get("DP_FAST_CUDA_CHAIN", "").strip() == "1"


CHAIN_MAX_COLUMNS = 16  # kConvChainMaxColumns: the chain kernel's widest plan (T_out <= 16)
# Weight bytes per CTA a chain entry asks L2 for, one block ahead (kernels/conv_block.cu: the
# chain kernel): the default covers a CTA's whole slice of any block of the PushT U-Net (W2's
# 1024-channel blocks: about 160 KiB on 132 SMs), so the weights stream from memory while the
# block before runs. Not yet timed on a GPU.
CHAIN_PREFETCH_BYTES = int(os.environ.get("DP_FAST_CHAIN_PREFETCH_BYTES", str(1 << 20)))


# The chain's flagged exchange (kernels/conv_block.cuh, ChainFlags): every staged entry writes
# its output a second time as flagged 64-bit words in a slot of its own, and reads an input an
# earlier staged entry wrote from that entry's slot, each value polled until it carries the
# launch's flag; a chain of staged entries only (the lesson's U-Net at batch 1) then runs without
# grid barriers (one L2 round trip from a value's store to its reader instead of three or four).
# DP_FAST_CUDA_CHAIN_FLAGS=1 turns it on, with DP_FAST_CUDA_STAGED=1 (no entry is staged
# without); off by default: on the H200 (2026-11-26) W1's chain took 138-157 µs per evaluation
# with it against 104 with the barriers and plain reads.
CHAIN_FLAGS = os.environ.get("DP_FAST_CUDA_CHAIN_FLAGS", "0").strip() == "1"


def _flagged_words(t: torch.Tensor) -> int:
    """Words of t's flagged copy (kFlaggedWords: a double's two halves take one each)."""
    return t.numel() * (2 if t.dtype == torch.float64 else 1)


# The chain's probe (``probing``; kernels/conv_block.cuh, kChainProbeFields): per entry and CTA,
# int64 values: the global timer (ns) at the entry's start and release, the SM's cycle counter at
# its start, after its tiles, after its arrival at the grid barrier and at its release, the SM's
# number, and gridDim.x << 32 | staged << 31 | the tiles the CTA ran.
CHAIN_PROBE_FIELDS = ("gt_start", "gt_released", "ck_start", "ck_worked", "ck_arrived", "ck_released", "smid", "info")


@dataclass
class ChainProbe:
    """One chain's probe: rows (entries x grid, len(CHAIN_PROBE_FIELDS)) int64, written by each
    launch (again at each replay of a graph that captured it), entry by entry, a row per CTA the
    launch ran: the first entries x gridDim rows, gridDim (in every row's info) at most the grid
    asked for (a launch runs fewer CTAs where they would not all be resident); the rest keep
    their -1."""

    rows: torch.Tensor
    configs: list


_probes = ProbeRecords()


def probing():
    """Every chain made inside (``ChainRecorder.finish``) is launched with a probe, appended to
    the list this yields as a ChainProbe: where each entry's time goes, CTA by CTA
    (``bench/diag/probe.py --method cuda-chain``). Thread 0 of each CTA reads the clocks; on the
    CPU emulation a steady clock stands in for both."""
    return _probes.probing()


class ChainRecorder:
    """Collects blocks (through ``conv_block``, the backend's signature; the sampler records every
    evaluation of its loop) as the chain kernel's parameters, without running them; ``finish()``
    returns the launcher.
    The recorded tensors must keep their memory (the sampler's static buffers): the parameters
    hold their addresses. Raises NotImplementedError for a block the chain cannot take (a plan
    wider than CHAIN_MAX_COLUMNS columns: T_out > 16)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.entries: list[torch.Tensor] = []
        self.configs: list[list[int]] = []  # each entry's plan (the op's config)
        self.scratch: list[torch.Tensor] = []  # tensors the entries point at that nobody else keeps
        self.partials: dict = {}  # split-partials buffers by (size, dtype)
        # the flagged exchange: the latest staged entry to write each output, by address, with its
        # output's (shape, strides, dtype); each staged entry's flagged words (the slot's size)
        self.written: dict[int, tuple[int, tuple]] = {}
        self.slot_words = 0

    def _partials(self, size, dtype, device):
        """One buffer per size: the chain runs its entries one after another, barriers between,
        and an entry's partial sums are consumed before the next entry starts, so every entry
        of a size (the same block at every step of the loop) shares one."""
        key = (size, dtype)
        if key not in self.partials:
            self.partials[key] = torch.empty(size, dtype=dtype, device=device)
        return self.partials[key]

    def conv_block(self, x, weight, bias, *, x2=None, mode="same", gn=None, act="none", cond=None, cond_scale=None,
                   residual=None, res_x2=None, res_weight=None, res_bias=None, head=None, step=None, out=None, tf32=False):
        args, c = _operator_args(x, weight, bias, x2=x2, mode=mode, gn=gn, act=act, cond=cond, cond_scale=cond_scale,
                                 residual=residual, res_x2=res_x2, res_weight=res_weight, res_bias=res_bias, head=head,
                                 step=step, out=out, pdl=False, prefetch=CHAIN_PREFETCH_BYTES, programs_per_sm=CHAIN_PROGRAMS_PER_SM,
                                 staged_grid=sm_count(self.device), scratch=self._partials)
        nc = args[18][3]  # args[18]: config, [3]: nc (csrc/library.cpp)
        if nc > CHAIN_MAX_COLUMNS:
            raise NotImplementedError(f"the chain kernel takes plans of at most {CHAIN_MAX_COLUMNS} columns (T_out <= 16), "
                                      f"got {nc} (T_out={c.T_out})")
        config = list(args[18])
        if CHAIN_FLAGS:
            config += self._links(config, x, x2, c.out)
            args = args[:18] + (config,) + args[19:]
        self.entries.append(_operator(self.device, "conv_block_params")(*args))
        self.configs.append(config)
        self.scratch.append(c.out)  # the output (allocated when out is None); the partials: self.partials
        return c.out

    def _links(self, config: list[int], x, x2, out) -> list[int]:
        """config[17:20] of the next entry, a staged one: x_from, x2_from (1 + the entry whose
        flagged slot holds x, x2: the latest to write it, where that was a staged entry writing
        the same view of it; 0: read it directly) and flag_slot (1 + its own index); zeros for an
        entry that is not staged. A write by an entry that is not staged ends a tensor's link."""
        key = lambda t: (tuple(t.shape), t.stride(), t.dtype)
        index = len(self.entries)
        staged = config[15] == 1

        def source(t) -> int:
            if t is None or not staged:
                return 0
            j, k = self.written.get(t.data_ptr(), (-1, None))
            return j + 1 if j >= 0 and k == key(t) else 0

        links = [source(x), source(x2), index + 1 if staged else 0]
        if staged:
            self.written[out.data_ptr()] = (index, key(out))
            self.slot_words = max(self.slot_words, _flagged_words(out))
        else:
            self.written.pop(out.data_ptr(), None)
        return links

    def finish(self) -> "Chain":
        flags = None
        if self.slot_words:  # the launch count and CTAs done (a word), then a slot per entry
            flags = torch.zeros(1 + len(self.entries) * self.slot_words, dtype=torch.int64, device=self.device)
        return Chain(self.device, torch.cat(self.entries), self.scratch, self.configs, list(self.partials.values()),
                     flags)


class Chain:
    """Recorded blocks (the sampler's: its whole loop): ``launch()`` runs them as one cooperative
    launch (a grid of at most one CTA per SM, grid-wide barriers between the blocks;
    kernels/conv_block.cuh). The grid is as many CTAs as the block with the most tiles has (all
    of a staged W1's blocks: 64), at most one per SM: a CTA without a tile in any block would
    only add an arrival to every barrier."""

    def __init__(self, device: torch.device, params: torch.Tensor, scratch: list[torch.Tensor],
                 configs: list[list[int]] | None = None, partials: list[torch.Tensor] | None = None,
                 flags: torch.Tensor | None = None):
        self.device = device
        self.flags = flags  # the flagged exchange's words (ChainRecorder.finish), or None
        self.configs = configs or []  # the entries' plans, for inspection
        self.partials = partials or []  # the split-partials buffers the entries share (kept alive here)
        self.params = params  # CPU bytes: checked by the operator at every launch
        self.device_params = params.to(device)
        self.barrier = torch.zeros(2, dtype=torch.int32, device=device)
        self.scratch = scratch
        tiles = [c[11] * c[12] * c[8] for c in self.configs]  # co_tiles x n_tiles x split
        self.grid = min(sm_count(device), max(tiles)) if tiles else sm_count(device)
        self.probe = None  # the probe's rows (``probing``), or None
        if _probes.active is not None:
            if not self.configs:
                raise ValueError("a probed chain needs its entries' configs (ChainRecorder.finish passes them)")
            self.probe = torch.full((len(self.configs) * self.grid, len(CHAIN_PROBE_FIELDS)), -1, dtype=torch.int64, device=device)
            _probes.active.append(ChainProbe(self.probe, self.configs))

    def launch(self) -> None:
        _operator(self.device, "conv_block_chain")(self.params, self.device_params, self.barrier, self.grid, self.flags,
                                                   self.probe)
