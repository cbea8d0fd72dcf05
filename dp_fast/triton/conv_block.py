"""conv_block: one fused kernel for a whole convolution block of either U-Net.

Computes, for every batch element and output time step:

    y   = conv(cat(x, x2), weight) + bias                  # MODE: same / down / up, see below
    y   = GroupNorm(y)            if groups                 # statistics over (channels of group, T_out)
    y   = act(y)                                            # none / silu / mish
    y   = y * cond_scale + cond   (FiLM)  or  y + cond      # cond, cond_scale: (B, C_out) per call
    y  += residual  or  res_weight @ cat(residual, res_x2) + res_bias   # identity or 1x1 conv
    y   = head.weight @ y + head.bias   if head              # a 1x1 conv after the block: (B, A, T_out)
    out = y                       or, with step=..., the scheduler step of y (see below)

Convolution modes (weights are packed as (C_out, C_in, K), contiguous):
    same : Conv1d(k=K odd, stride 1, padding K // 2)              T_out = T_in
    down : Conv1d(k=3, stride 2, padding 1)                       T_out = (T_in + 1) // 2
    up   : ConvTranspose1d(k=4, stride 2, padding 1), weight packed from (C_in, C_out, 4) as
           ``conv_transpose_layout`` orders it                    T_out = 2 * T_in
Step epilogue (the network's last layer): ``y`` is the model output m[b, c, t]; with the sample
x and noise read at [b, t, c] through their strides and one coefficient row (see
``dp_fast.ops.scheduler_step``), the kernel writes the scheduler's next sample to out[b, t, c];
``out`` may be the sample itself (every element is read and written by the same program).

Work split (``plan``): the block is a matrix product with implicit im2col, W (C_out, C_in * K)
times the input columns (C_in * K, B * T_out). A program computes BLOCK_CO output channels x
BB whole sequences (BB * T_PAD columns) over one share of the reduction; the reduction is split
over programs so that the grid fills TARGET_PROGRAMS_PER_SM programs per SM without spilling
into a second wave (``dp_fast.ops.conv_block.split_reduction``), so at batch 1 every SM streams
a share of the weights. A "region" (a GroupNorm group, or one channel tile,
times one batch tile) that spans several programs is finished by the last of them to arrive
(an atomic counter, reset by that program): it sums the partial products from a scratch buffer
and applies the epilogue, so GroupNorm statistics are exact two-pass statistics over the whole
group; every program loads the region's epilogue operands before it arrives, so the last one
then waits for the partial sums only. With a head (Chi's output conv fused into the network's
last block), the program that finishes a region also adds the region's share of the head's
products to a scratch and arrives at one more counter per batch tile, and the last region to
arrive sums the shares, adds the bias and applies the step. Products: when the whole batch fits in GEMV_MAX_COLUMNS
columns (batch 1 at horizons up to 16), a broadcast multiply-add into one accumulator per
product, summed once after the loop, with the next chunk's loads (GEMV_DEPTH chunks') in
flight during this one's arithmetic (on sm_90: 1/8 of an input element gathered and 10 instructions per weight at 4
columns, against 1 and 32 for a 16-wide ``tl.dot`` tile whose columns are mostly padding;
``bench/diag/triton_sass.py`` counts them), the chunks of the narrowest tiles loaded as 3-d
tensors of the product's shape (GEMV_3D_MAX_COLUMNS); otherwise
``tl.dot`` (IEEE fp32, TF32 with ``tf32=True``, bf16 with fp32 accumulation; float64 by a
broadcast multiply-add). From WIDE_MIN_COLUMNS columns on (large batches: W4) the tiles are
sized for the tensor cores (128 output channels, GroupNorm groups of a power-of-2 size whole and
several to a tile, 8 warps) and float32 multiplies as three TF32 products (``FP32_WIDE_DOT``),
with float32's accuracy; their split regions may be finished by a second launch instead, each
of its programs taking whole batch elements of a region (``_conv_block_finish_kernel``, WIDE_FINISH).

Launch: on sm_90 and later (``dp_fast.ops.conv_block.dependent_launch``) a programmatic
dependent launch: a program asks L2 for the first PREFETCH_LINES lines of each of its weight
rows, lets the next launch start, and waits for the previous one (``gdc_wait``) before any other
memory access (``bench/diag/triton_sass.py`` checks the compiled order); Triton without
``triton.language.extra.cuda.gdc_wait`` launches plainly.

Probe (``probing()``, for ``bench/diag/probe.py``): launches inside it compile a variant of the
kernel whose every program writes one row of timestamps (``PROBE_FIELDS``: the SM's cycle counter
at its start, after its wait, after its reductions, after its arrival and at its end; the global
timer at its start and end; its SM and its role in its region), so that a block's time in the
sampler's graph can be split into its handoff, its programs' work and its last program's tail.

Layouts: every activation is addressed through (batch, channel, time) strides, so a (B, T, C)
tensor is passed as ``t.transpose(1, 2)`` and no permute or concatenation is ever copied.
Assumes: T_out <= MAX_T; launches on one device are not concurrent (they share the arrival
counters); weights float32, bfloat16 or float64
(float64 accumulates in float64, the others in float32); activations of any float dtype.
``dp_fast.ops.conv_block.conv_block_ref`` is the plain PyTorch twin with the same signature.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:  # grid dependency control (programmatic dependent launch), Triton >= 3.3
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    _HAS_GDC = True
except ImportError:  # pragma: no cover - older Triton: plain launches (PDL is a constexpr False)
    gdc_launch_dependents = gdc_wait = None
    _HAS_GDC = False

from ..ops.conv_block import (ACTS, MODES, PREFETCH_BYTES, PREFETCH_LINE_BYTES, GroupNormArgs, HeadArgs,
                              ProbeRecords, StepArgs, arrival_counters, check_call, dependent_launch, head_channels, sm_count,
                              split_reduction)

MAX_T = 128  # the longest output sequence; one tile always holds whole sequences
# A head's products are unrolled one output channel at a time in the finishing programs, at most
# HEAD_MAX_CHANNELS (dp_fast.ops.conv_block: the widest head, and the DP_FAST_HEAD knob). Fused
# on sm_90 (Triton 3.8, W2's last block): 1081 instructions a warp after the arrival instead of
# 347, where the output conv's own launch issued 299 + 114; untimed.
# Programs an SM holds at once (a GEMV program: 4 warps of ~200 registers), for split_reduction.
TARGET_PROGRAMS_PER_SM = int(os.environ.get("DP_FAST_PROGRAMS_PER_SM", "2"))
MIN_CHUNKS_PER_SPLIT = int(os.environ.get("DP_FAST_MIN_CHUNKS_PER_SPLIT", "2"))  # ... but give every split at least this many BLOCK_R chunks
REGION_ELEMENTS_PER_WARP = 2048  # a GroupNorm tail holds (channels of a group) x BLOCK_N values, 64 per thread
# A batch of at most this many columns (batch x padded time) is one tile that multiplies by
# broadcast multiply-add into one accumulator per product, summed once at the end ("GEMV":
# batch 1 at horizons <= 16); wider batches use tl.dot, whose operands are at least 16 wide.
# 16 since 2026-11-27: on the H200 batch 1's blocks at T=16, on tl.dot tiles, took 2.4 times
# their twins at T=8 on GEMV tiles for the same weights (W2's 256-channel blocks 13.4 us against
# 5.6, W1's 8.4 against 4.7), where the arithmetic is a few hundred cycles either way; GEMV tiles
# at 16 columns take 32-row chunks to keep their accumulators in registers (sm_90: 122-175
# registers, no spills; 192-256 programs for those blocks instead of 48-128). Timed on the H200
# (2026-11-27, one call, us per evaluation against 8): W1 73 against 174, W2 358 against 442,
# W3 595 against 741. DP_FAST_GEMV_MAX_COLUMNS=8 gives them tl.dot tiles again; the CUDA
# backend's GEMV kernel stops at 8 (dp_fast.cuda.conv_block.KERNEL_GEMV_COLUMNS).
GEMV_MAX_COLUMNS = int(os.environ.get("DP_FAST_GEMV_MAX_COLUMNS", "16"))
# rows x BLOCK_R x columns accumulators of a GEMV program (half in float64): 8192, 64 a thread
# at 4 warps. DP_FAST_GEMV_ACC_ELEMENTS=4096 halves a program's rows (twice the programs; with
# DP_FAST_PROGRAMS_PER_SM=4 the same split): four programs of 115-128 registers an SM instead of
# two of ~200 (sm_90, Triton 3.6). Timed on the H100 (2026-11-27, one call, us per evaluation
# against the default, both with two chunks ahead as then): W1 88.6 against 90.4, W2 371.4
# against 390.0, within the spread of the runs there (W2's default: 4% between its 10th and 90th
# percentile); left as it is.
GEMV_ACC_ELEMENTS = int(os.environ.get("DP_FAST_GEMV_ACC_ELEMENTS", "8192"))
if GEMV_ACC_ELEMENTS < 1024 or GEMV_ACC_ELEMENTS & (GEMV_ACC_ELEMENTS - 1):
    raise ValueError(f"DP_FAST_GEMV_ACC_ELEMENTS must be a power of 2 of at least 1024, got {GEMV_ACC_ELEMENTS}")
# Warps of a GEMV program. Nsight Compute on the H100 (2026-11-27, W2's block 12, Triton 3.6):
# 4 warps of 198 registers, two programs an SM, so two warps a scheduler, each waiting 9.4
# cycles between instructions (global loads 3.0, the CTA barriers of the weights' pass through
# shared memory 1.8, shared loads 1.1): one instruction issued every 5 cycles, 37% of DRAM's
# bandwidth. 8 warps halve each thread's accumulators and weights (113-120 registers: four
# warps a scheduler), but timed in the same call as the 4096 accumulators above: W1 118.5 (31%
# slower), W2 377.5 (within the spread). More warps to hide the stalls did not buy time: 4
# stays; DP_FAST_GEMV_WARPS=8 for A/B runs.
GEMV_NUM_WARPS = int(os.environ.get("DP_FAST_GEMV_WARPS", "4"))
if GEMV_NUM_WARPS not in (4, 8):  # the two compiled for sm_90 without spills
    raise ValueError(f"DP_FAST_GEMV_WARPS must be 4 or 8, got {GEMV_NUM_WARPS}")
# Chunks a GEMV loop has in flight ahead of the one it multiplies: 1 (the default) or 2. Two
# keep twice the weights in flight per SM for ~11 more registers (float32 on sm_90: two programs
# per SM, no spills, Triton 3.6 and 3.8; bench/diag/triton_sass.py), but a program's prologue
# then loads two chunks before its first multiply-add, where W1's programs have 1 to 4 chunks
# in all. Timed on the H100 (2026-11-27, one call, us per evaluation, 2 against 1): W1 95.0
# against 75.7, W2 324.3 against 325.1; so 1 since. bfloat16 keeps one either way: Triton 3.8
# holds some of its GEMV programs to 128 registers, where two chunks ahead spill.
GEMV_DEPTH = int(os.environ.get("DP_FAST_GEMV_DEPTH", "1"))
if GEMV_DEPTH not in (1, 2):
    raise ValueError(f"DP_FAST_GEMV_DEPTH must be 1 or 2, got {GEMV_DEPTH}")
# Or the GEMV loop as a plain loop that Triton's software pipeliner stages (tl.range with
# num_stages = GEMV_STAGES): the weights and the gathered input of GEMV_STAGES - 1 chunks copied
# asynchronously to shared memory ahead of the one multiplied (cp.async: LDGSTS in the sm_90
# SASS), none held in registers, as the CUDA kernel's weight ring does. 0 (the default): the
# register loop of GEMV_DEPTH. Not yet timed on a GPU; for the A/B of DP_FAST_GEMV_STAGES=4.
GEMV_STAGES = int(os.environ.get("DP_FAST_GEMV_STAGES", "0"))
if GEMV_STAGES != 0 and not 2 <= GEMV_STAGES <= 8:
    raise ValueError(f"DP_FAST_GEMV_STAGES must be 0 or 2..8, got {GEMV_STAGES}")
# GEMV tiles of at most this many columns load their chunks as 3-d tensors of the product's
# shape, w (rows, BLOCK_R, 1) and the input (1, BLOCK_R, columns), so that the weights arrive in
# the layout their multiply-adds read (the input, 8 times smaller at 4 columns, is still moved
# through shared memory); 2-d loads made Triton move the weights there too, with CTA barriers,
# before every chunk's products (sm_90, Triton 3.6). Compiled for sm_90 (2026-11-27,
# bench/results/static-sm90-2026-11-27-W*-gemv3d-*.txt), at 4 columns (W2's and W3's blocks at
# T=4, which hold most of their weights): the loop 156-171 instructions a trip instead of
# 175-181 in float32 and 173-179 instead of 255-265 in bfloat16, its shared-memory loads 4 instead
# of 18 (float32), the same or fewer barriers, 126-162 registers instead of 153-193, and the
# sum of the products after the loop a third to a half shorter. At 8 and 16 columns the loop takes
# twice the barriers for its larger input, so they keep the 2-d loads (16 moves every GEMV tile
# to 3-d loads, 0 none: for the A/B), as float64's tiles do (16-row chunks: 148 instructions a
# trip with 3-d loads against 89 at W2's block 12). Not timed on a GPU yet.
GEMV_3D_MAX_COLUMNS = int(os.environ.get("DP_FAST_GEMV_3D_MAX_COLUMNS", "4"))
if GEMV_3D_MAX_COLUMNS < 0:
    raise ValueError(f"DP_FAST_GEMV_3D_MAX_COLUMNS must be 0 or more, got {GEMV_3D_MAX_COLUMNS}")
# A batch of at least this many columns (batch x padded time; W4's batch 64) is a product large
# enough to be bound by arithmetic (W4: 18.6 G multiply-adds per evaluation, 555 us at the
# H100's 67 TFLOP/s of float32 multiply-add), so it takes "wide" tiles made for the tensor
# cores: WIDE_BLOCK_CO output channels (two Hopper warpgroups of 64 rows) by up to 128 columns,
# chunks of WIDE_BLOCK_R reduction rows, WIDE_NUM_WARPS warps, float32 as FP32_WIDE_DOT says.
# On sm_90 (Triton 3.6, bench/diag/triton_sass.py) their loops issue about 83-112
# multiply-adds per warp instruction in float32 (tf32x3) and 190-330 in bf16, against at most
# 32 for a loop of FFMAs (18-25 for the 32-row float32 tiles they replace).
WIDE_MIN_COLUMNS = int(os.environ.get("DP_FAST_WIDE_MIN_COLUMNS", "64"))
WIDE_BLOCK_CO = 128
WIDE_BLOCK_R = 32  # two chunks in registers: 64 reduction rows spill in bf16
WIDE_NUM_WARPS = 8
# Wide programs resident per SM (8 warps of up to 255 registers: one), so the reduction is split
# only as far as one wave of programs: a second wave would double the time, and the last
# program of a region reads every split's partial sums alone.
WIDE_PROGRAMS_PER_SM = 1
# Who finishes a wide tile's split regions (a GroupNorm group, or a tile of channels, times a
# batch tile): "last" (the default), the last of the region's programs to arrive, alone (as
# every other tile); "kernel", a second launch (``_conv_block_finish_kernel``, FINISH_NUM_WARPS warps) whose
# programs each take whole batch elements of a region (GroupNorm's statistics are per batch
# element), about one program an SM in all (where a region's batch tile holds one batch
# element, as W5's at T=64, its last program still finishes it). Compiled for sm_90 (Triton 3.6,
# ``bench/diag/triton_sass.py``'s ``tail`` column), the last program of a W4 region issues more
# instructions a warp after its arrival than in its whole main loop (the partial sums of every
# share, 64 values a thread, then GroupNorm, Mish, FiLM) on one SM in eight, the others idle,
# in float32 and bfloat16 alike, as W4's times are (H100, 2026-11-27: 2130 and 2135 us per
# evaluation). DP_FAST_WIDE_FINISH=kernel for the A/B; untimed.
WIDE_FINISH = os.environ.get("DP_FAST_WIDE_FINISH", "last").strip()
if WIDE_FINISH not in ("last", "kernel"):
    raise ValueError(f"DP_FAST_WIDE_FINISH must be 'last' or 'kernel', got {WIDE_FINISH!r}")
FINISH_NUM_WARPS = 4
# Chunks a bfloat16 wide tile's loop loads ahead of the one it multiplies (as GEMV_DEPTH): a
# wide program, one an SM, has one chunk of weights and gathered input in flight (8 KiB each)
# while it multiplies another, so each trip of its loop waits out about one round trip to
# memory. Two ahead fit in the registers a bfloat16 wide tile has left once a finish launch takes
# its regions' tails (WIDE_FINISH=kernel, Triton 3.6, sm_90: W4's programs 174-252 registers, no
# spill); float32's (three TF32 products a chunk) spill 4-39 words a trip in the loop with two,
# so they keep one. DP_FAST_WIDE_DEPTH=2 for the A/B; untimed.
WIDE_DEPTH = int(os.environ.get("DP_FAST_WIDE_DEPTH", "1"))
if WIDE_DEPTH not in (1, 2):
    raise ValueError(f"DP_FAST_WIDE_DEPTH must be 1 or 2, got {WIDE_DEPTH}")
# How wide tiles multiply float32: "tf32x3" (the default) splits each operand into a TF32 high
# part and a TF32 remainder and sums three tensor-core products (hi*hi + hi*lo + lo*hi, float32
# accumulation; the dropped lo*lo is about 2^-22 of a product), which keeps float32's accuracy
# within SPEC.md's bound (bench/diag/tf32x3_accuracy.py, W4's network on the CPU with float32
# accumulation: 6.0e-7 relative error per evaluation, against 6.3e-7 with float32 operands and
# 7.1e-4 with plain TF32); "ieee" multiplies on the CUDA cores. precision="tf32" always takes
# plain TF32.
FP32_WIDE_DOT = os.environ.get("DP_FAST_FP32_WIDE_DOT", "tf32x3")
if FP32_WIDE_DOT not in ("tf32x3", "ieee"):
    raise ValueError(f"DP_FAST_FP32_WIDE_DOT must be 'tf32x3' or 'ieee', got {FP32_WIDE_DOT!r}")
# Wide tiles (large batches) read their input from an explicit im2col (``_im2col_kernel``, one
# more launch per block, R x columns values written and read once) instead of gathering it in
# the reduction loop: both operands are then plain tiles, which Triton's pipeliner copies
# asynchronously NUM_STAGES chunks ahead (the register loop keeps one chunk ahead, one wide
# program per SM: about 1 us a chunk). DP_FAST_WIDE_IM2COL=1 turns it on; untimed, so not the
# default.
IM2COL = os.environ.get("DP_FAST_WIDE_IM2COL", "0").strip() == "1"
IM2COL_BLOCK_R = 32
NUM_WARPS = 4
NUM_STAGES = 3
# The GEMV and wide loops hold one or two chunks in registers ahead of the one they multiply:
# 4-8 KiB of weights per program at batch 1 (16-32 rows x 64). LOOP_PREFETCH_CHUNKS > 0 also asks
# L2 in each trip for the weights that many chunks ahead (prefetch.global.L2, one line per row
# and 128 bytes of its chunk; never in the interpreter, which cannot run inline PTX). Off by
# default since the H200's third run (2026-11-27, bench/results/README.md): with 4 chunks ahead
# against none, W2 took 358 against 322 us per evaluation in one call and 307 against 296 in
# another, W4 2096 against 2027, W1, W3 and bfloat16 W2 the same within their spread.
LOOP_PREFETCH_CHUNKS = int(os.environ.get("DP_FAST_LOOP_PREFETCH_CHUNKS", "0"))

# Where a program of a programmatic dependent launch lets the next block launch: "early" (the
# default), right after its weight prefetch, so the next block's programs take the SM slots
# this one's free from the start and prefetch their own weights meanwhile; "late", after its
# reductions, so that they launch as this block's programs reach their finish (the split's
# partial sums, the epilogue). Early, the programs of the block after next can launch before
# the next one runs, and every early program holds its slot while it waits: where those land
# is for the scheduler to say, not for the block that runs next. W1's blocks took 34-53 us more
# an evaluation in the sampler than alone on the H100 (2026-11-27), with their weights in L2
# either way; DP_FAST_PDL_TRIGGER=late for the A/B. Untimed.
PDL_TRIGGER = os.environ.get("DP_FAST_PDL_TRIGGER", "early").strip()
if PDL_TRIGGER not in ("early", "late"):
    raise ValueError(f"DP_FAST_PDL_TRIGGER must be 'early' or 'late', got {PDL_TRIGGER!r}")

_MODE_IDS = {m: i for i, m in enumerate(MODES)}
_ACT_IDS = {a: i for i, a in enumerate(ACTS)}
_COND_NONE, _COND_ADD, _COND_FILM = 0, 1, 2
_RES_NONE, _RES_IDENTITY, _RES_CONV = 0, 1, 2
_PREC_IEEE, _PREC_TF32, _PREC_FP64, _PREC_UPCAST, _PREC_TF32X3 = 0, 1, 2, 3, 4
_LINE_BYTES = tl.constexpr(PREFETCH_LINE_BYTES)


# -- the kernel -------------------------------------------------------------------------------


@triton.jit
def _mish(y):
    # x * tanh(softplus(x)) = x * n / (n + 2) with n = e^x (e^x + 2); softplus(x) = x above 20.
    e = tl.exp(tl.minimum(y, 20.0))
    n = e * (e + 2.0)
    return tl.where(y > 20.0, y, y * n / (n + 2.0))


@triton.jit
def _prefetch_weight_slice(w_ptr, w_row, co, co_mask, r_lo, r_hi, LINES: tl.constexpr):
    """Asks L2 for the first LINES 128-byte lines of every row's slice w[co, r_lo:r_hi] (the
    program's weights; programmatic dependent launch). Lanes past a slice repeat its first line."""
    PER_LINE: tl.constexpr = _LINE_BYTES * 8 // w_ptr.dtype.element_ty.primitive_bitwidth
    r = r_lo + tl.arange(0, LINES) * PER_LINE
    first = w_ptr + co[:, None] * w_row + r_lo
    at = tl.where(co_mask[:, None] & (r < r_hi)[None, :], w_ptr + co[:, None] * w_row + r[None, :], first)
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [at], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _gather(r0, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in, b, t, n_ok,
            K: tl.constexpr, MODE: tl.constexpr, HAS_X2: tl.constexpr, BLOCK_R: tl.constexpr, DIM3: tl.constexpr):
    """The input columns cols[r, n] of reduction indices r0 <= r < min(r0 + BLOCK_R, r_hi),
    r = ci * K + k (an implicit im2col of cat(x, x2)) at columns (b, t); zeros past r_hi and
    outside the sequence, with no memory traffic."""
    r = r0 + tl.arange(0, BLOCK_R)
    r_ok = r < r_hi
    ci = r // K
    k = r % K
    if MODE == 0:  # same
        src = t[None, :] + (k[:, None] - K // 2)
        ok = (src >= 0) & (src < T_in)
    elif MODE == 1:  # down: stride 2, padding 1
        src = 2 * t[None, :] + (k[:, None] - 1)
        ok = (src >= 0) & (src < T_in)
    else:  # up: transposed, stride 2, padding 1 -> t = 2 * src - 1 + k
        num = t[None, :] + 1 - k[:, None]
        src = num // 2
        ok = (num >= 0) & ((num % 2) == 0) & (src < T_in)
    ok = ok & r_ok[:, None] & n_ok[None, :]
    src = tl.where(ok, src, 0)
    if HAS_X2:  # channel ci of cat(x, x2): one load through a pointer picked per element
        in1 = ci[:, None] < C1
        off = tl.where(in1, b[None, :] * sxb + ci[:, None] * sxc + src * sxt,
                       b[None, :] * s2b + (ci[:, None] - C1) * s2c + src * s2t)
        ptrs = tl.where(in1, x_ptr, x2_ptr) + off
    else:
        ptrs = x_ptr + b[None, :] * sxb + ci[:, None] * sxc + src * sxt
    if DIM3:  # (1, BLOCK_R, columns): loaded in a layout of the GEMV product's shape
        cols = tl.load(ptrs[None, :, :], mask=ok[None, :, :], other=0.0)
    else:
        cols = tl.load(ptrs, mask=ok, other=0.0)
    return cols


@triton.jit
def _chunk(w_ptr, w_row, co, co_mask, r0, r_hi,
           x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in,
           b, t, n_ok,
           K: tl.constexpr, MODE: tl.constexpr, HAS_X2: tl.constexpr, BLOCK_R: tl.constexpr, DIM3: tl.constexpr):
    """One chunk of the reduction, r0 <= r < min(r0 + BLOCK_R, r_hi) with r = ci * K + k the
    index of the (C_out, C_in, K) weight rows: the weights w[co, r] and the input columns
    cols[r, n] they multiply (``_gather``). Zeros past r_hi, with no memory traffic. DIM3 (the
    GEMV product): w as (rows, BLOCK_R, 1) and cols as (1, BLOCK_R, columns), loaded in layouts
    of the product's 3-d shape."""
    cols = _gather(r0, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in, b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, DIM3)
    r = r0 + tl.arange(0, BLOCK_R)
    ptrs = w_ptr + co[:, None] * w_row + r[None, :]
    mask = co_mask[:, None] & (r < r_hi)[None, :]
    if DIM3:
        w = tl.load(ptrs[:, :, None], mask=mask[:, :, None], other=0.0)
    else:
        w = tl.load(ptrs, mask=mask, other=0.0)
    return w, cols


@triton.jit
def _im2col_kernel(x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in, B, T_out, R, col_ptr, ncol,
                   K: tl.constexpr, MODE: tl.constexpr, HAS_X2: tl.constexpr, PDL: tl.constexpr,
                   T_PAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    """The explicit im2col of a wide tile's input (IM2COL): col[r, c] = ``_gather`` at column
    c = b * T_PAD + t, for r < R and c < ncol (a whole number of the fused kernel's column
    tiles; zeros past the batch and the sequence), so that the fused kernel's reduction reads
    both of its operands as plain tiles, which Triton's pipeliner copies ahead asynchronously."""
    r0 = tl.program_id(0) * BLOCK_R
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    t = n % T_PAD
    b = n // T_PAD
    n_ok = (t < T_out) & (b < B)
    b = tl.where(n_ok, b, 0)
    if PDL:  # reads the previous block's output: waits for it; the fused kernel may launch meanwhile
        gdc_launch_dependents()
        gdc_wait()
    cols = _gather(r0, R, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in, b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, False)
    r = r0 + tl.arange(0, BLOCK_R)
    tl.store(col_ptr + r[:, None] * ncol + n[None, :], cols, mask=(r < R)[:, None] & (n < ncol)[None, :])


@triton.jit
def _dot(acc, w, cols, PREC: tl.constexpr):
    """acc + w @ cols in the product PREC names (see ``_precision``)."""
    if PREC == 2:  # float64: no tensor-core path, a broadcast multiply-add
        acc += tl.sum(w[:, :, None] * cols.to(w.dtype)[None, :, :], axis=1)
    elif PREC == 1:
        acc = tl.dot(w, cols.to(w.dtype), acc, input_precision="tf32")
    elif PREC == 3:  # bfloat16 in the interpreter, whose bfloat16 dot is wrong (Triton 3.8)
        acc = tl.dot(w.to(tl.float32), cols.to(tl.float32), acc, input_precision="ieee")
    elif PREC == 4:
        acc = tl.dot(w, cols.to(w.dtype), acc, input_precision="tf32x3")
    else:
        acc = tl.dot(w, cols.to(w.dtype), acc, input_precision="ieee")
    return acc


@triton.jit
def _outer(w, cols, dtype: tl.constexpr, DIM3: tl.constexpr):
    """The GEMV loop's products w[co, r] * cols[r, n] of one chunk, (rows, BLOCK_R, columns)."""
    if DIM3:  # already (rows, BLOCK_R, 1) and (1, BLOCK_R, columns)
        prod = w.to(dtype) * cols.to(dtype)
    else:
        prod = w.to(dtype)[:, :, None] * cols.to(dtype)[None, :, :]
    return prod


@triton.jit
def _mac(acc, w_ptr, w_row, co, co_mask, r_lo, r_hi,
         x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in,
         b, t, n_ok,
         K: tl.constexpr, MODE: tl.constexpr, HAS_X2: tl.constexpr, PREC: tl.constexpr, BLOCK_R: tl.constexpr,
         GEMV: tl.constexpr, WIDE: tl.constexpr, AHEAD: tl.constexpr, DEPTH: tl.constexpr, STAGES: tl.constexpr,
         GEMV3D: tl.constexpr, col_ptr, ncol, col0, COLS: tl.constexpr):
    """acc[co, n] += sum_{r_lo <= r < r_hi} w[co, r] * cols[r, n] over the chunks of ``_chunk``.

    GEMV (few columns) and WIDE tiles load each chunk into registers DEPTH chunks before it is
    multiplied (DEPTH + 1 chunks in registers), and ask L2 for the weights AHEAD chunks on.
    GEMV: each product goes to its own accumulator acc3[co, r - r0, n], summed over r once after
    the loop, so the loop is loads and multiply-adds only; GEMV3D: the chunks loaded as 3-d
    tensors of the product's shape (GEMV_3D_MAX_COLUMNS). WIDE: ``tl.dot`` stores its operands to shared memory in the swizzled
    layouts its tensor-core products read (left to Triton's pipeliner, the gathered input tile
    of a float32 wide tile was copied asynchronously into an unswizzled buffer with a warp's 32
    lanes on 32 of its rows, all in one bank: sm_90, Triton 3.6). COLS (a wide tile with its
    input as an explicit im2col, ``_im2col_kernel``: columns col0 .. col0 + BLOCK_N of the
    (R, ncol) tensor at col_ptr) and otherwise: ``tl.dot`` with Triton's pipeliner staging the
    loads through shared memory (NUM_STAGES). GEMV with STAGES > 0: a plain loop that Triton's
    pipeliner stages STAGES deep (GEMV_STAGES), instead of the register loop."""
    LINES: tl.constexpr = BLOCK_R * w_ptr.dtype.element_ty.primitive_bitwidth // (8 * _LINE_BYTES)  # of a chunk's row
    if COLS:
        n = col0 + tl.arange(0, acc.shape[1])
        for r0 in range(r_lo, r_hi, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            r_ok = r < r_hi
            cols = tl.load(col_ptr + r[:, None] * ncol + n[None, :], mask=r_ok[:, None], other=0.0)
            w = tl.load(w_ptr + co[:, None] * w_row + r[None, :], mask=co_mask[:, None] & r_ok[None, :], other=0.0)
            acc = _dot(acc, w, cols, PREC)
    elif GEMV and STAGES > 0:
        acc3 = tl.zeros((acc.shape[0], BLOCK_R, acc.shape[1]), dtype=acc.dtype)
        for r0 in tl.range(r_lo, r_hi, BLOCK_R, num_stages=STAGES):
            if AHEAD > 0:  # L2 for the weights AHEAD chunks on (the last line again past the slice)
                _prefetch_weight_slice(w_ptr, w_row, co, co_mask, tl.minimum(r0 + AHEAD * BLOCK_R, r_hi - 1), r_hi, LINES)
            w, cols = _chunk(w_ptr, w_row, co, co_mask, r0, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in,
                             b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, GEMV3D)
            acc3 += _outer(w, cols, acc.dtype, GEMV3D)
        acc += tl.sum(acc3, axis=1)
    elif GEMV or WIDE:
        if GEMV:
            acc3 = tl.zeros((acc.shape[0], BLOCK_R, acc.shape[1]), dtype=acc.dtype)
        w_next, cols_next = _chunk(w_ptr, w_row, co, co_mask, r_lo, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in,
                                   b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, GEMV3D)
        if DEPTH == 2:  # a second chunk in flight
            w_next2, cols_next2 = _chunk(w_ptr, w_row, co, co_mask, r_lo + BLOCK_R, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c,
                                         s2t, T_in, b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, GEMV3D)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            if AHEAD > 0:  # L2 for the weights AHEAD chunks on (the last line again past the slice)
                _prefetch_weight_slice(w_ptr, w_row, co, co_mask, tl.minimum(r0 + AHEAD * BLOCK_R, r_hi - 1), r_hi, LINES)
            w = w_next
            cols = cols_next
            if DEPTH == 2:
                w_next = w_next2
                cols_next = cols_next2
                w_next2, cols_next2 = _chunk(w_ptr, w_row, co, co_mask, r0 + 2 * BLOCK_R, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b,
                                             s2c, s2t, T_in, b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, GEMV3D)
            else:
                w_next, cols_next = _chunk(w_ptr, w_row, co, co_mask, r0 + BLOCK_R, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c,
                                           s2t, T_in, b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, GEMV3D)
            if GEMV:
                acc3 += _outer(w, cols, acc.dtype, GEMV3D)
            else:
                acc = _dot(acc, w, cols, PREC)
        if GEMV:
            acc += tl.sum(acc3, axis=1)
    else:
        for r0 in range(r_lo, r_hi, BLOCK_R):
            w, cols = _chunk(w_ptr, w_row, co, co_mask, r0, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in,
                             b, t, n_ok, K, MODE, HAS_X2, BLOCK_R, False)
            acc = _dot(acc, w, cols, PREC)
    return acc


@triton.jit
def _row(ptr, co, co_mask, ACC: tl.constexpr):
    """A per-channel vector (bias, GroupNorm affine), (ROWS,) in ACC."""
    return tl.load(ptr + co, mask=co_mask, other=0.0).to(ACC)


@triton.jit
def _per_call(ptr, sb, b, co, valid, ACC: tl.constexpr):
    """A (B, C_out) condition at the tile's (channel, column)s."""
    return tl.load(ptr + b[None, :] * sb + co[:, None], mask=valid, other=0.0).to(ACC)


@triton.jit
def _activation_at(ptr, sb, sc, st, b, co, t, valid, ACC: tl.constexpr):
    """A (B, C, T) activation at the tile's (channel, column)s."""
    return tl.load(ptr + b[None, :] * sb + co[:, None] * sc + t[None, :] * st, mask=valid, other=0.0).to(ACC)


@triton.jit
def _tile_operand(ptrs, b, co, t, valid, KIND: tl.constexpr, ACC: tl.constexpr):
    """One of the epilogue's tile-shaped operands at the tile's (channel, column)s. ptrs: (cond,
    scale, scb, ssb, residual, srb, src, srt, sample, smb, smc, smt, noise, snb, snc, snt); KIND:
    0 FiLM scale, 1 condition (shift), 2 identity residual, 3 the step's sample, 4 its noise."""
    cond_ptr, scale_ptr, scb, ssb, r_ptr, srb, src_, srt, smp_ptr, smb, smc, smt, nz_ptr, snb, snc, snt = ptrs
    if KIND == 0:
        return _per_call(scale_ptr, ssb, b, co, valid, ACC)
    elif KIND == 1:
        return _per_call(cond_ptr, scb, b, co, valid, ACC)
    elif KIND == 2:
        return _activation_at(r_ptr, srb, src_, srt, b, co, t, valid, ACC)
    elif KIND == 3:
        return _activation_at(smp_ptr, smb, smc, smt, b, co, t, valid, ACC)
    else:
        return _activation_at(nz_ptr, snb, snc, snt, b, co, t, valid, ACC)


@triton.jit
def _operands(co, co_mask, b, t, n_ok, bias_ptr, gn_w_ptr, gn_b_ptr, scal_ptr, rb_ptr, coef_ptr, ptrs,
              ACC: tl.constexpr, GN: tl.constexpr, COND: tl.constexpr, RES: tl.constexpr, STEP: tl.constexpr,
              HAS_NOISE: tl.constexpr, TILES: tl.constexpr):
    """Every value the epilogue reads besides the convolution, for a tile of channels co: all of
    them written before this launch (a previous block, the hoisted conditioning, the sampler),
    so they may be loaded at any point after the wait for the previous launch; each loaded here
    or, when the epilogue does not use it, the bias in its place. Returns (bias, gamma, beta,
    scale, shift, residual, sample, noise, scalars) with scalars (eps, clip, the 8 step
    coefficients). TILES=False leaves the tile-shaped ones (FiLM scale and shift, identity
    residual, sample, noise) to ``_late``: a wide tile holds each in 64 registers a thread."""
    bias = _row(bias_ptr, co, co_mask, ACC)
    gamma, beta, scale, shift, res, xs, nz = bias, bias, bias, bias, bias, bias, bias
    if GN:
        gamma = _row(gn_w_ptr, co, co_mask, ACC)
        beta = _row(gn_b_ptr, co, co_mask, ACC)
    if RES == 2:
        res = _row(rb_ptr, co, co_mask, ACC)
    if TILES:
        valid = co_mask[:, None] & n_ok[None, :]
        if COND == 2:
            scale = _tile_operand(ptrs, b, co, t, valid, 0, ACC)
        if COND != 0:
            shift = _tile_operand(ptrs, b, co, t, valid, 1, ACC)
        if RES == 1:
            res = _tile_operand(ptrs, b, co, t, valid, 2, ACC)
        if STEP:
            xs = _tile_operand(ptrs, b, co, t, valid, 3, ACC)
            if HAS_NOISE:
                nz = _tile_operand(ptrs, b, co, t, valid, 4, ACC)
    eps = tl.load(scal_ptr + 0).to(ACC)  # (eps, clip): always two values
    clip = tl.load(scal_ptr + 1).to(ACC)
    a_x, a_m, b_x, b_m, c_x0, c_eps, c_x, sigma = eps, eps, eps, eps, eps, eps, eps, eps
    if STEP:  # coef_ptr is a placeholder (the bias, maybe shorter than 8) without the step
        a_x = tl.load(coef_ptr + 0).to(ACC)
        a_m = tl.load(coef_ptr + 1).to(ACC)
        b_x = tl.load(coef_ptr + 2).to(ACC)
        b_m = tl.load(coef_ptr + 3).to(ACC)
        c_x0 = tl.load(coef_ptr + 4).to(ACC)
        c_eps = tl.load(coef_ptr + 5).to(ACC)
        c_x = tl.load(coef_ptr + 6).to(ACC)
        sigma = tl.load(coef_ptr + 7).to(ACC)
    return bias, gamma, beta, scale, shift, res, xs, nz, (eps, clip, a_x, a_m, b_x, b_m, c_x0, c_eps, c_x, sigma)


@triton.jit
def _late(ptrs, value, b, co, t, valid, KIND: tl.constexpr, ACC: tl.constexpr, TILES: tl.constexpr):
    """A tile-shaped operand ``_operands`` left out (TILES=False), loaded where it is used
    (``_tile_operand``); else ``value``."""
    if TILES:
        return value
    return _tile_operand(ptrs, b, co, t, valid, KIND, ACC)


@triton.jit
def _epilogue(
    y, racc, ops, ptrs, co, co_mask, t, n_ok, b0, B, T_out, cpg,
    out_ptr, sob, soc, sot, b,
    ACT: tl.constexpr, GN: tl.constexpr, COND: tl.constexpr, RES: tl.constexpr,
    STEP: tl.constexpr, HAS_NOISE: tl.constexpr, TILES: tl.constexpr,
    ROWS: tl.constexpr, BB: tl.constexpr, T_PAD: tl.constexpr, GPT: tl.constexpr, HEAD: tl.constexpr = False,
):
    """Everything after the convolution, on a (ROWS, BB * T_PAD) tile holding whole sequences
    (and, with GroupNorm, one whole group or GPT of them) of batch elements b0 .. b0 + BB; y: the
    convolution without bias; ops: the tile's ``_operands`` (with TILES as given there), ptrs:
    ``_late``'s. Stores the tile and returns it; HEAD: returns it unstored (``_head`` takes it)."""
    acc_dtype = y.dtype
    bias, gamma, beta, scale, shift, res, xs, nz, scalars = ops
    eps, clip, a_x, a_m, b_x, b_m, c_x0, c_eps, c_x, sigma = scalars
    y += bias[:, None]
    valid = co_mask[:, None] & n_ok[None, :]
    if GN:  # statistics per batch element over (channels of the group, T_out), two passes
        count = cpg * T_out
        # the rows hold GPT whole groups of ROWS // GPT channels (GPT = 1: one group, or part of it)
        y4 = tl.reshape(y, (GPT, ROWS // GPT, BB, T_PAD))
        v4 = (tl.reshape(co_mask, (GPT, ROWS // GPT))[:, :, None, None] & (tl.arange(0, T_PAD) < T_out)[None, None, None, :]
              & ((b0 + tl.arange(0, BB)) < B)[None, None, :, None])
        mean = tl.sum(tl.sum(tl.where(v4, y4, 0.0), axis=3), axis=1) / count
        d4 = tl.where(v4, y4 - mean[:, None, :, None], 0.0)
        var = tl.sum(tl.sum(d4 * d4, axis=3), axis=1) / count
        y = tl.reshape(d4 / tl.sqrt(var + eps)[:, None, :, None], (ROWS, BB * T_PAD))
        y = y * gamma[:, None] + beta[:, None]
    if ACT == 1:
        y = y * tl.sigmoid(y)
    elif ACT == 2:
        y = _mish(y)
    if COND == 2:
        y = y * _late(ptrs, scale, b, co, t, valid, 0, acc_dtype, TILES)
    if COND != 0:
        y += _late(ptrs, shift, b, co, t, valid, 1, acc_dtype, TILES)
    if RES == 1:
        y += _late(ptrs, res, b, co, t, valid, 2, acc_dtype, TILES)
    elif RES == 2:
        y += racc + res[:, None]
    if STEP:
        xs = _late(ptrs, xs, b, co, t, valid, 3, acc_dtype, TILES)
        x0 = a_x * xs + a_m * y
        x0 = tl.where(x0 < -clip, -clip, tl.where(x0 > clip, clip, x0))
        y = c_x0 * x0 + c_eps * (b_x * xs + b_m * y) + c_x * xs
        if HAS_NOISE:
            y += sigma * _late(ptrs, nz, b, co, t, valid, 4, acc_dtype, TILES)
    if not HEAD:
        tl.store(out_ptr + b[None, :] * sob + co[:, None] * soc + t[None, :] * sot, y, mask=valid)
    return y


@triton.jit
def _head_operands(hb_ptr, A, scal_ptr, coef_ptr, ptrs, t, n_ok, b, ACC: tl.constexpr, STEP: tl.constexpr,
                   HAS_NOISE: tl.constexpr, A_PAD: tl.constexpr):
    """The head's output channels (a, a_mask) and its epilogue's ``_operands`` (its bias; the
    step's sample, noise and coefficients), loaded, as the block's own, before the arrival."""
    a = tl.arange(0, A_PAD)
    a_mask = a < A
    a = tl.where(a_mask, a, 0)
    ops = _operands(a, a_mask, b, t, n_ok, hb_ptr, hb_ptr, hb_ptr, scal_ptr, hb_ptr, coef_ptr, ptrs,
                    ACC, False, 0, 0, STEP, HAS_NOISE, True)
    return a, a_mask, ops


@triton.jit
def _head(y, co, co_mask, g, pid_n, n_regions, hw_ptr, hops, A, C_out, hpart_ptr, hcnt_ptr, ptrs,
          t, n_ok, b, B, T_out, out_ptr, sob, soc, sot,
          ACC: tl.constexpr, STEP: tl.constexpr, HAS_NOISE: tl.constexpr, A_PAD: tl.constexpr, BB: tl.constexpr,
          T_PAD: tl.constexpr):
    """The fused 1x1 convolution after the block (HEAD), for region g's finished rows y (channels
    co) of batch tile pid_n: the region's share of head_weight @ y, (A_PAD, BB * T_PAD), to the
    scratch hpart (regions, batch tiles, A_PAD, BB * T_PAD); the last of the n_regions regions to
    arrive at the batch tile's counter sums the shares in region order, adds the bias, applies the
    scheduler step (STEP) and stores the (B, A, T_out) output. hops: ``_head_operands``."""
    N: tl.constexpr = BB * T_PAD
    a_out, a_mask, ops = hops
    a = tl.arange(0, A_PAD)
    n = tl.arange(0, N)
    y = tl.where(co_mask[:, None], y, 0.0)
    h = tl.zeros((A_PAD, N), dtype=ACC)
    for i in tl.static_range(A_PAD):  # one output channel at a time: (rows, N) live, not (A, rows, N)
        w = tl.load(hw_ptr + i * C_out + co, mask=co_mask & (i < A), other=0.0).to(ACC)
        h = tl.where(a[:, None] == i, tl.sum(w[:, None] * y, axis=0)[None, :], h)
    at = ((g * tl.num_programs(1) + pid_n) * A_PAD + a[:, None]) * N + n[None, :]
    tl.store(hpart_ptr + at, h)
    tl.debug_barrier()  # every thread's share is written before the release below
    counter = hcnt_ptr + pid_n
    arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
    if arrived == n_regions - 1:
        h = tl.zeros((A_PAD, N), dtype=ACC)
        for r in range(n_regions):
            h += tl.load(hpart_ptr + ((r * tl.num_programs(1) + pid_n) * A_PAD + a[:, None]) * N + n[None, :], cache_modifier=".cg")
        _epilogue(h, h, ops, ptrs, a_out, a_mask, t, n_ok, pid_n * BB, B, T_out, 1, out_ptr, sob, soc, sot, b,
                  0, False, 0, 0, STEP, HAS_NOISE, True, A_PAD, BB, T_PAD, 1)
        tl.atomic_xchg(counter, 0, sem="relaxed")  # as the region counters' reset


# The probe (``probing``): registers a program reads at its phases. _PROBE_GPU reads them with
# PTX; _PROBE_FAKE (the interpreter, which runs no PTX) stands in the phase's number, 1000 a phase.
_PROBE_OFF, _PROBE_GPU, _PROBE_FAKE = 0, 1, 2
_CLOCK, _GLOBALTIMER, _SMID = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
# A program's role (the low two bits of its row's last field): one of a split region's programs
# that did not finish it, the last to arrive (it finished the region), a program holding its
# whole region.
PROBE_SPLIT, PROBE_LAST, PROBE_WHOLE = 0, 1, 2
_PROBE_SPLIT, _PROBE_LAST, _PROBE_WHOLE = tl.constexpr(PROBE_SPLIT), tl.constexpr(PROBE_LAST), tl.constexpr(PROBE_WHOLE)


@triton.jit
def _probe(PROBE: tl.constexpr, REG: tl.constexpr, phase: tl.constexpr, after):
    """The register REG (_CLOCK: the SM's cycle counter; _GLOBALTIMER: nanoseconds, one clock for
    every SM; _SMID: the SM's number) as an int64, read once ``after`` (an int32) is there: the
    read is predicated on it, so a warp cannot issue it before the value it waits for arrives.
    0 when PROBE is off (and compiled away)."""
    if PROBE == 1:
        if REG == 2:
            v = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1).to(tl.int64)
        elif REG == 1:
            v = tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.s32 p, $1, -2147483648; mov.u64 $0, 0; @p mov.u64 $0, %globaltimer; }",
                "=l,r", [after], dtype=tl.int64, is_pure=False, pack=1)
        else:
            v = tl.inline_asm_elementwise(
                "{ .reg .pred p; setp.ne.s32 p, $1, -2147483648; mov.u64 $0, 0; @p mov.u64 $0, %clock64; }",
                "=l,r", [after], dtype=tl.int64, is_pure=False, pack=1)
    elif PROBE == 2:
        v = (after * 0 + (0 if REG == 2 else phase * 1000)).to(tl.int64)
    else:
        v = 0
    return v


@triton.jit
def _conv_block_kernel(
    x_ptr, sxb, sxc, sxt, C1,
    x2_ptr, s2b, s2c, s2t,
    w_ptr, R, bias_ptr, B, T_in, T_out, C_out,
    gn_w_ptr, gn_b_ptr, cpg, scal_ptr,
    cond_ptr, scale_ptr, scb, ssb,
    r_ptr, srb, src_, srt, CR1,
    r2_ptr, sr2b, sr2c, sr2t, RR,
    rw_ptr, rb_ptr,
    out_ptr, sob, soc, sot,
    smp_ptr, smb, smc, smt,
    nz_ptr, snb, snc, snt,
    coef_ptr,
    part_ptr, cnt_ptr, n_tiles, chunks_per_split, res_chunks_per_split,
    col_ptr, ncol, probe_ptr,
    hw_ptr, hb_ptr, A, hpart_ptr, hcnt_ptr,
    K: tl.constexpr, MODE: tl.constexpr, ACT: tl.constexpr, GN: tl.constexpr, COND: tl.constexpr,
    RES: tl.constexpr, HAS_X2: tl.constexpr, HAS_R2: tl.constexpr, STEP: tl.constexpr, PROBE: tl.constexpr,
    HAS_NOISE: tl.constexpr, PREC: tl.constexpr, GEMV: tl.constexpr, WIDE: tl.constexpr, AHEAD: tl.constexpr, DEPTH: tl.constexpr,
    STAGES: tl.constexpr, GEMV3D: tl.constexpr, COLS: tl.constexpr, PDL: tl.constexpr, LATE_TRIGGER: tl.constexpr, PREFETCH_LINES: tl.constexpr,
    FINISH: tl.constexpr, TPG: tl.constexpr, GPT: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_CO: tl.constexpr, REGION: tl.constexpr, BB: tl.constexpr, T_PAD: tl.constexpr, BLOCK_R: tl.constexpr,
    HEAD: tl.constexpr, HEAD_STEP: tl.constexpr, A_PAD: tl.constexpr,
):
    # grid: (output-channel tiles, batch tiles, reduction splits). With GroupNorm a group's
    # channels are TPG consecutive tiles, or a tile holds GPT whole groups. A "region" (a group,
    # or one tile, times one batch tile) is finished by the last of its TPG * SPLIT programs to
    # arrive.
    pid_c = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    if GN and GPT == 1:
        g = pid_c // TPG
        lo = (pid_c % TPG) * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_mask = lo < cpg
        co = g * cpg + lo
    else:
        g = pid_c
        co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_mask = co < C_out
    co = tl.where(co_mask, co, 0)
    n = tl.arange(0, BB * T_PAD)
    t = n % T_PAD
    b = pid_n * BB + n // T_PAD
    n_ok = (t < T_out) & (b < B)
    b = tl.where(n_ok, b, 0)
    acc_dtype = tl.float64 if PREC == 2 else tl.float32

    acc = tl.zeros((BLOCK_CO, BB * T_PAD), dtype=acc_dtype)
    r_lo = split * chunks_per_split * BLOCK_R
    r_hi = tl.minimum(r_lo + chunks_per_split * BLOCK_R, R)
    # The probe's phases (PROBE; ``probing``): started, waited, reduced, arrived, ended
    gt_start = _probe(PROBE, _GLOBALTIMER, 0, pid_c)
    ck_start = _probe(PROBE, _CLOCK, 0, pid_c)
    if PDL:  # launched while the previous block finishes: only the weight prefetch before the wait
        if PREFETCH_LINES > 0:
            _prefetch_weight_slice(w_ptr, R, co, co_mask, r_lo, r_hi, PREFETCH_LINES)
        if not LATE_TRIGGER:
            gdc_launch_dependents()
        gdc_wait()
    ck_waited = _probe(PROBE, _CLOCK, 1, pid_c)
    acc = _mac(acc, w_ptr, R, co, co_mask, r_lo, r_hi, x_ptr, sxb, sxc, sxt, C1, x2_ptr, s2b, s2c, s2t, T_in,
               b, t, n_ok, K, MODE, HAS_X2, PREC, BLOCK_R, GEMV, WIDE, AHEAD, DEPTH, STAGES, GEMV3D, col_ptr, ncol, pid_n * BB * T_PAD,
               COLS)
    racc = tl.zeros((BLOCK_CO, BB * T_PAD), dtype=acc_dtype)
    if RES == 2:  # the 1x1 residual conv: a second reduction, added after the activation
        q_lo = split * res_chunks_per_split * BLOCK_R
        q_hi = tl.minimum(q_lo + res_chunks_per_split * BLOCK_R, RR)
        racc = _mac(racc, rw_ptr, RR, co, co_mask, q_lo, q_hi, r_ptr, srb, src_, srt, CR1, r2_ptr, sr2b, sr2c, sr2t, T_out,
                    b, t, n_ok, 1, 0, HAS_R2, PREC, BLOCK_R, GEMV, WIDE, AHEAD, DEPTH, STAGES, GEMV3D, col_ptr, ncol, 0, False)
    ck_reduced = _probe(PROBE, _CLOCK, 2, pid_c)
    if PDL:
        if LATE_TRIGGER:  # the next block's programs launch as this one's finish their reductions
            gdc_launch_dependents()

    # The epilogue's operands (``_operands``), loaded before it and, split, before the arrival,
    # so that the last program's tail is its partial sums' round trip; a wide tile's
    # tile-shaped ones where they are used (TILES, ``_late``).
    TILES: tl.constexpr = not WIDE
    ptrs = (cond_ptr, scale_ptr, scb, ssb, r_ptr, srb, src_, srt, smp_ptr, smb, smc, smt, nz_ptr, snb, snc, snt)
    if HEAD:
        hops = _head_operands(hb_ptr, A, scal_ptr, coef_ptr, ptrs, t, n_ok, b, acc_dtype, HEAD_STEP, HAS_NOISE, A_PAD)
    if TPG * SPLIT == 1:  # the program holds its whole region: finish here
        ops = _operands(co, co_mask, b, t, n_ok, bias_ptr, gn_w_ptr, gn_b_ptr, scal_ptr, rb_ptr, coef_ptr, ptrs,
                        acc_dtype, GN, COND, RES, STEP, HAS_NOISE, TILES)
        y = _epilogue(acc, racc, ops, ptrs, co, co_mask, t, n_ok, pid_n * BB, B, T_out, cpg, out_ptr, sob, soc, sot, b,
                      ACT, GN, COND, RES, STEP, HAS_NOISE, TILES, BLOCK_CO, BB, T_PAD, GPT, HEAD)
        if HEAD:
            _head(y, co, co_mask, g, pid_n, tl.num_programs(0) // TPG, hw_ptr, hops, A, C_out, hpart_ptr, hcnt_ptr, ptrs,
                  t, n_ok, b, B, T_out, out_ptr, sob, soc, sot, acc_dtype, HEAD_STEP, HAS_NOISE, A_PAD, BB, T_PAD)
        ck_arrived = ck_reduced  # no arrival: the program finishes its region itself
        role = _PROBE_WHOLE
    else:
        # Partial sums to the scratch (SLOTS, SPLIT, n_tiles, C_out, BLOCK_N); the last program
        # of the region to arrive (an acq_rel counter) sums the partials and finishes, or
        # (FINISH) a second launch does (``_conv_block_finish_kernel``).
        BLOCK_N: tl.constexpr = BB * T_PAD
        nn = tl.arange(0, BLOCK_N)
        slot = C_out * BLOCK_N * n_tiles * SPLIT
        at = ((split * n_tiles + pid_n) * C_out + co[:, None]) * BLOCK_N + nn[None, :]
        tl.store(part_ptr + at, acc, mask=co_mask[:, None])
        if RES == 2:
            tl.store(part_ptr + slot + at, racc, mask=co_mask[:, None])
        ck_arrived = _probe(PROBE, _CLOCK, 3, pid_c)  # FINISH: a finish launch takes the region
        role = _PROBE_SPLIT
        if not FINISH:
            tl.debug_barrier()  # every thread's partials are written before the release below
            rco, rco_mask = _region_rows(g, cpg, C_out, GN, GPT, REGION)
            ops = _operands(rco, rco_mask, b, t, n_ok, bias_ptr, gn_w_ptr, gn_b_ptr, scal_ptr, rb_ptr, coef_ptr, ptrs,
                            acc_dtype, GN, COND, RES, STEP, HAS_NOISE, TILES)
            counter = cnt_ptr + pid_n * tl.num_programs(0) // TPG + g
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            ck_arrived = _probe(PROBE, _CLOCK, 3, arrived)
            role = tl.where(arrived == TPG * SPLIT - 1, _PROBE_LAST, _PROBE_SPLIT)
            if arrived == TPG * SPLIT - 1:
                y, ry = _summed_partials(part_ptr, slot, n_tiles, pid_n, C_out, rco, rco_mask, nn, acc_dtype, RES, SPLIT,
                                         REGION, BLOCK_N, BLOCK_N)
                y = _epilogue(y, ry, ops, ptrs, rco, rco_mask, t, n_ok, pid_n * BB, B, T_out, cpg, out_ptr, sob, soc, sot, b,
                              ACT, GN, COND, RES, STEP, HAS_NOISE, TILES, REGION, BB, T_PAD, GPT, HEAD)
                if HEAD:
                    _head(y, rco, rco_mask, g, pid_n, tl.num_programs(0) // TPG, hw_ptr, hops, A, C_out, hpart_ptr, hcnt_ptr,
                          ptrs, t, n_ok, b, B, T_out, out_ptr, sob, soc, sot, acc_dtype, HEAD_STEP, HAS_NOISE, A_PAD, BB, T_PAD)
                # ready for the next launch: relaxed, since nothing of this launch reads it again and
                # the next launch's reads come after this one's end (stream order, or gdc_wait), so
                # the last program does not wait for its output's stores to reach L2 (acq_rel, the
                # default, put a MEMBAR.ALL.GPU before it in the sm_90 SASS)
                tl.atomic_xchg(counter, 0, sem="relaxed")
    if PROBE:  # the program's row of the probe (``probing``): PROBE_FIELDS
        ck_end = _probe(PROBE, _CLOCK, 4, pid_c)
        gt_end = _probe(PROBE, _GLOBALTIMER, 4, pid_c)
        at = probe_ptr + ((split * tl.num_programs(1) + pid_n) * tl.num_programs(0) + pid_c) * 8
        tl.store(at + 0, gt_start)
        tl.store(at + 1, gt_end)
        tl.store(at + 2, ck_start)
        tl.store(at + 3, ck_waited)
        tl.store(at + 4, ck_reduced)
        tl.store(at + 5, ck_arrived)
        tl.store(at + 6, ck_end)
        tl.store(at + 7, _probe(PROBE, _SMID, 0, pid_c) * 4 + role)


@triton.jit
def _region_rows(g, cpg, C_out, GN: tl.constexpr, GPT: tl.constexpr, REGION: tl.constexpr):
    """Region g's output channels as REGION rows: (channels, valid). With GroupNorm and GPT == 1
    a region is group g (its TPG tiles); otherwise the g-th tile of REGION channels (GPT whole
    groups, or no GroupNorm: the plan makes REGION the tile's BLOCK_CO then)."""
    if GN and GPT == 1:
        region_first = g * cpg
        region_len = cpg
    else:
        region_first = g * REGION
        region_len = REGION
    rows = tl.arange(0, REGION)
    rco_mask = rows < region_len
    rco = tl.where(rco_mask, region_first + rows, 0)
    return rco, rco_mask & (rco < C_out)


@triton.jit
def _summed_partials(part_ptr, slot, n_tiles, pid_n, C_out, rco, rco_mask, nn, ACC: tl.constexpr, RES: tl.constexpr,
                     SPLIT: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr):
    """The partial products of channels rco (ROWS), columns nn (COLS of the BLOCK_N of batch tile
    pid_n) summed over the SPLIT shares of the reduction: the convolution's and, RES == 2, the 1x1
    residual's."""
    y = tl.zeros((ROWS, COLS), dtype=ACC)
    ry = tl.zeros((ROWS, COLS), dtype=ACC)
    for s in range(SPLIT):
        ra = ((s * n_tiles + pid_n) * C_out + rco[:, None]) * BLOCK_N + nn[None, :]
        y += tl.load(part_ptr + ra, mask=rco_mask[:, None], other=0.0, cache_modifier=".cg")
        if RES == 2:
            ry += tl.load(part_ptr + slot + ra, mask=rco_mask[:, None], other=0.0, cache_modifier=".cg")
    return y, ry


@triton.jit
def _conv_block_finish_kernel(
    part_ptr, n_tiles, B, T_out, C_out,
    bias_ptr, gn_w_ptr, gn_b_ptr, cpg, scal_ptr,
    cond_ptr, scale_ptr, scb, ssb,
    r_ptr, srb, src_, srt, rb_ptr,
    out_ptr, sob, soc, sot,
    smp_ptr, smb, smc, smt,
    nz_ptr, snb, snc, snt,
    coef_ptr,
    ACT: tl.constexpr, GN: tl.constexpr, COND: tl.constexpr, RES: tl.constexpr, STEP: tl.constexpr,
    HAS_NOISE: tl.constexpr, PDL: tl.constexpr, GPT: tl.constexpr, SPLIT: tl.constexpr, REGION: tl.constexpr,
    BB: tl.constexpr, T_PAD: tl.constexpr, SUB_BB: tl.constexpr,
):
    """A block's finish as a launch of its own (WIDE_FINISH = "kernel"), after the conv_block
    kernel wrote every program's partial products: program (g, pid_n, j) sums them over the
    SPLIT shares for region g (a GroupNorm group, GPT of them, or one tile of channels: the
    conv_block kernel's regions) and batch elements j * SUB_BB .. (j + 1) * SUB_BB of batch
    tile pid_n, and applies the epilogue. GroupNorm's statistics are per batch element, so a
    program holding whole batch elements of a region has all it needs: the finish of a region
    is spread over BB / SUB_BB programs instead of left to the last of its programs alone."""
    g = tl.program_id(0)
    pid_n = tl.program_id(1)
    j = tl.program_id(2)
    acc_dtype = tl.float32  # wide tiles only: never float64
    rco, rco_mask = _region_rows(g, cpg, C_out, GN, GPT, REGION)
    BLOCK_N: tl.constexpr = BB * T_PAD
    nn = j * (SUB_BB * T_PAD) + tl.arange(0, SUB_BB * T_PAD)
    t = nn % T_PAD
    b = pid_n * BB + nn // T_PAD
    n_ok = (t < T_out) & (b < B)
    b = tl.where(n_ok, b, 0)
    if PDL:  # launched while the conv_block kernel runs: its partials (and every operand) after the wait
        gdc_launch_dependents()
        gdc_wait()
    ptrs = (cond_ptr, scale_ptr, scb, ssb, r_ptr, srb, src_, srt, smp_ptr, smb, smc, smt, nz_ptr, snb, snc, snt)
    ops = _operands(rco, rco_mask, b, t, n_ok, bias_ptr, gn_w_ptr, gn_b_ptr, scal_ptr, rb_ptr, coef_ptr, ptrs,
                    acc_dtype, GN, COND, RES, STEP, HAS_NOISE, True)
    slot = C_out * BLOCK_N * n_tiles * SPLIT
    y, ry = _summed_partials(part_ptr, slot, n_tiles, pid_n, C_out, rco, rco_mask, nn, acc_dtype, RES, SPLIT, REGION,
                             SUB_BB * T_PAD, BLOCK_N)
    _epilogue(y, ry, ops, ptrs, rco, rco_mask, t, n_ok, pid_n * BB + j * SUB_BB, B, T_out, cpg, out_ptr, sob, soc, sot, b,
              ACT, GN, COND, RES, STEP, HAS_NOISE, True, REGION, SUB_BB, T_PAD, GPT)


# True when Triton's CPU interpreter (TRITON_INTERPRET=1 at import) runs the kernels.
INTERPRETED = type(_conv_block_kernel).__name__ == "InterpretedFunction"


# -- the probe ----------------------------------------------------------------------------------

# A probed program's row, int64 values: the global timer (ns) at its start and end, its SM's cycle
# counter at its start, after its wait for the previous launch, after its reductions (the
# products summed: what follows is the partial sums' store or the epilogue), after its arrival
# (the split region's counter: the value returned; a program that holds its whole region: its
# reductions' time again) and at its end (after its last store is issued), and its SM's number
# times 4 plus its role (PROBE_SPLIT, PROBE_LAST, PROBE_WHOLE).
PROBE_FIELDS = ("gt_start", "gt_end", "ck_start", "ck_waited", "ck_reduced", "ck_arrived", "ck_end", "info")


@dataclass
class ProbeRecord:
    """One probed launch: rows (programs, len(PROBE_FIELDS)) int64 in the grid's order (x
    fastest), written by the kernel when it runs (again at each replay of a captured graph)."""

    rows: torch.Tensor
    grid: tuple[int, int, int]  # (channel tiles, batch tiles, splits of the reduction)
    reduction: int  # C_in * K
    tpg: int
    finish: int  # programs of a finish launch (not probed) per region's batch tile; 0: none
    captured: bool  # recorded while a CUDA graph was being captured


_probes = ProbeRecords()


def probing():
    """Every conv_block launch inside writes a row of timestamps per program (PROBE_FIELDS) and
    is appended to the list this yields, as a ProbeRecord: where a block's time goes, program by
    program, in the order and company it runs in (``bench/diag/probe.py``). A graph captured
    inside keeps its probes at every replay. The rows are allocated unfilled under a capture (a
    fill would be a launch between two blocks), filled with -1 otherwise. On the GPU the clock
    reads are PTX (%globaltimer, %clock64, %smid); in the interpreter each phase reads its number
    times 1000 and the SM number 0. The finish launch (WIDE_FINISH) is not probed."""
    return _probes.probing()


def _probe_rows(p: Plan, device: torch.device, reduction: int) -> torch.Tensor | None:
    """A launch's probe rows, recorded (``probing``); None when nothing is probed."""
    if _probes.active is None:
        return None
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    programs = p.grid[0] * p.grid[1] * p.grid[2]
    rows = torch.empty((programs, len(PROBE_FIELDS)), dtype=torch.int64, device=device)
    if not capturing:
        rows.fill_(-1)
    _probes.active.append(ProbeRecord(rows, p.grid, reduction, p.tpg, p.finish, capturing))
    return rows


# -- the launcher -------------------------------------------------------------------------------


def _strides(t: torch.Tensor | None):
    return (0, 0, 0) if t is None else tuple(t.stride())


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


_scalar_tensors: dict = {}


def _scalars(device: torch.device, dtype: torch.dtype, eps: float, clip: float) -> torch.Tensor:
    """(eps, clip) as a tensor in the accumulation dtype (a float argument would be float32)."""
    key = (device, dtype, eps, clip)
    if key not in _scalar_tensors:
        with torch.inference_mode(False):  # a normal tensor, whatever mode the first call was in
            _scalar_tensors[key] = torch.tensor([eps, clip], dtype=dtype, device=device)
    return _scalar_tensors[key]


@dataclass(frozen=True)
class Plan:
    """How one conv_block call is tiled (see the kernel's grid)."""

    block_co: int
    tpg: int  # tiles per GroupNorm group (1 without GroupNorm)
    gpt: int  # GroupNorm groups per tile (wide tiles of groups smaller than WIDE_BLOCK_CO rows; else 1)
    region: int  # rows of a finishing tile (a whole group, or one tile)
    bb: int  # batch elements per tile
    t_pad: int
    block_r: int
    gemv: bool  # broadcast multiply-add with a deferred sum instead of tl.dot
    wide: bool  # a tile of WIDE_MIN_COLUMNS or more columns: float32 products as FP32_WIDE_DOT says
    num_warps: int
    pdl: bool  # a programmatic dependent launch (dp_fast.ops.conv_block.dependent_launch)
    prefetch_lines: int  # 128-byte lines of each weight row a program prefetches before its wait
    ahead: int  # chunks ahead whose weights the loop asks L2 for (LOOP_PREFETCH_CHUNKS; 0: none)
    depth: int  # chunks a register loop loads ahead of the one it multiplies (GEMV_DEPTH: float32 GEMV; WIDE_DEPTH: bfloat16 wide)
    stages: int  # a GEMV loop staged by Triton's pipeliner this deep instead (GEMV_STAGES; 0: the register loop)
    gemv3d: bool  # a GEMV tile loading its chunks as 3-d tensors of the product's shape (GEMV_3D_MAX_COLUMNS)
    cols: bool  # a wide tile reading its input from an explicit im2col (IM2COL)
    finish: int  # programs (2 or more) a region's batch tile is finished by in a second launch (WIDE_FINISH); 0: its last program
    split: int
    chunks_per_split: int
    res_chunks_per_split: int
    grid: tuple[int, int, int]


def plan(B: int, T_out: int, C_out: int, R: int, RR: int, groups: int | None, dtype: torch.dtype, sms: int,
         pdl: bool = False, head: bool = False) -> Plan:
    t_pad = _pow2(T_out)
    gemv = _pow2(B * t_pad) <= GEMV_MAX_COLUMNS  # the whole batch in one narrow tile: each weight is read once
    wide = not gemv and B * t_pad >= WIDE_MIN_COLUMNS and dtype != torch.float64  # float64 has no tensor-core product
    block_r = 16 if dtype == torch.float64 else WIDE_BLOCK_R if wide else 64
    num_warps = WIDE_NUM_WARPS if wide else GEMV_NUM_WARPS if gemv else NUM_WARPS
    if gemv:  # as many rows as the accumulators allow: each gathered column serves them all
        block_n = _pow2(B * t_pad)
        budget = GEMV_ACC_ELEMENTS // (4 if dtype == torch.float64 else 1)
        block_r = min(block_r, max(8, budget // (16 * block_n)))  # 16 rows at least; more columns (16), shorter chunks
        block_co = max(16, min(64, budget // (block_r * block_n)))
    else:
        block_n = max(16, min(128, _pow2(B * t_pad)))
        block_co = WIDE_BLOCK_CO if wide else 32  # each gathered column serves 32 (128) rows: half (1/8) the gathers per weight of 16
    gpt = 1
    if groups:
        cpg = C_out // groups
        if wide and cpg & (cpg - 1) == 0 and cpg < block_co:  # whole groups of a power-of-2 size per tile
            gpt = min(block_co // cpg, _pow2(groups))
            block_co = region = gpt * cpg
            tpg, co_tiles = 1, triton.cdiv(groups, gpt)
        else:
            block_co = min(block_co, max(16, _pow2(cpg)))
            tpg = triton.cdiv(cpg, block_co)
            region = _pow2(tpg * block_co)
            co_tiles = groups * tpg
        block_n = max(t_pad if gemv else 16, t_pad, min(block_n, _pow2(REGION_ELEMENTS_PER_WARP * num_warps // region)))
    else:
        tpg, co_tiles = 1, triton.cdiv(C_out, block_co)
        region = block_co
    bb = max(1, block_n // t_pad)
    block_n = bb * t_pad
    n_tiles = triton.cdiv(B, bb)
    chunks = triton.cdiv(R, block_r)
    resident = (WIDE_PROGRAMS_PER_SM if wide else TARGET_PROGRAMS_PER_SM) * sms
    split, per = split_reduction(co_tiles * n_tiles, chunks, resident, MIN_CHUNKS_PER_SPLIT)
    # With PDL, PREFETCH_BYTES of the program's weights, the same power-of-2 share of each row.
    row_lines = triton.cdiv(per * block_r * dtype.itemsize, PREFETCH_LINE_BYTES)
    share = PREFETCH_BYTES // (block_co * PREFETCH_LINE_BYTES)
    prefetch_lines = min(_pow2(row_lines), 1 << max(share, 1).bit_length() - 1) if pdl and share > 0 else 0
    ahead = LOOP_PREFETCH_CHUNKS if (gemv or wide) and not INTERPRETED and block_r * dtype.itemsize >= PREFETCH_LINE_BYTES else 0
    depth = GEMV_DEPTH if gemv and dtype != torch.bfloat16 else WIDE_DEPTH if wide and dtype == torch.bfloat16 and not IM2COL else 1
    stages = GEMV_STAGES if gemv else 0
    gemv3d = gemv and dtype != torch.float64 and bb * t_pad <= GEMV_3D_MAX_COLUMNS
    cols = wide and IM2COL
    ahead = 0 if cols else ahead  # the pipelined loop has no register chunks ahead to prefetch for
    finish = 0
    # whole batch elements a program, about one an SM; not with a head, which the last programs finish
    if wide and WIDE_FINISH == "kernel" and tpg * split > 1 and not head:
        regions = co_tiles // tpg * n_tiles
        finish = min(bb, 1 << (max(sms // regions, 1).bit_length() - 1))
        finish = finish if finish > 1 else 0  # a region one program must finish whole (one batch element: W5's T=64) keeps its last
    return Plan(block_co, tpg, gpt, region, bb, t_pad, block_r, gemv, wide, num_warps, pdl, prefetch_lines, ahead, depth, stages, gemv3d,
                cols, finish,
                split, per,
                triton.cdiv(triton.cdiv(RR, block_r), split) if RR else 0, (co_tiles, n_tiles, split))


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
    """The fused block (module docstring). Shapes:
    x (B, C1, T_in), x2 (B, C2, T_in) or None; weight (C_out, C1 + C2, K) contiguous, bias (C_out,);
    cond, cond_scale (B, C_out) with unit channel stride; residual (B, CR1, T_out), res_x2
    (B, CR2, T_out), res_weight (C_out, CR1 + CR2) contiguous (None: identity), res_bias (C_out,);
    head: a 1x1 convolution of the block's output (weight (A, C_out) contiguous, bias (A,)), at most
    dp_fast.ops.conv_block.HEAD_MAX_CHANNELS outputs; out and the step's tensors then have A channels;
    out (B, C_out or A, T_out), any strides, allocated when None. ``tf32``: float32 products on the
    tensor cores (TF32 inputs, float32 accumulation). Returns out.
    """
    c = check_call(x, weight, bias, x2=x2, mode=mode, gn=gn, act=act, cond=cond, cond_scale=cond_scale, residual=residual,
                   res_x2=res_x2, res_weight=res_weight, res_bias=res_bias, step=step, out=out, max_t=MAX_T, head=head)
    B, C1, T_in, T_out, C_out, C_in, K, CR1, CR2, out = c.B, c.C1, c.T_in, c.T_out, c.C_out, c.C_in, c.K, c.CR1, c.CR2, c.out
    res_kind = {"none": _RES_NONE, "identity": _RES_IDENTITY, "conv": _RES_CONV}[c.res]
    dt = weight.dtype  # activations are stored in the weights' dtype; float64 accumulates in float64
    fp64 = dt == torch.float64
    RR = CR1 + CR2 if res_kind == _RES_CONV else 0
    p = plan(B, T_out, C_out, C_in * K, RR, gn.groups if gn else None, dt, sm_count(x.device), _HAS_GDC and dependent_launch(x.device),
             head is not None)
    acc_dtype = torch.float64 if fp64 else torch.float32
    finishing = p.tpg * p.split > 1
    if finishing:
        counters = arrival_counters(x.device, p.grid[0] // p.tpg * p.grid[1]) if not p.finish else bias
        parts = torch.empty(((2 if res_kind == _RES_CONV else 1) * p.split * p.grid[1] * C_out * p.bb * p.t_pad,), dtype=acc_dtype, device=x.device)
    else:
        parts = counters = bias
    regions = p.grid[0] // p.tpg * p.grid[1]
    a_pad = _pow2(c.C_head) if head is not None else 1
    if head is not None:  # its shares and one counter per batch tile, after the regions' counters
        hcounters = arrival_counters(x.device, regions + p.grid[1])[regions:]
        hparts = torch.empty((regions * a_pad * p.bb * p.t_pad,), dtype=acc_dtype, device=x.device)
    else:
        hcounters = hparts = bias
    scal = _scalars(x.device, acc_dtype, float(gn.eps) if gn else 0.0, float(step.clip_range) if step else 0.0)
    dummy = bias
    cols, ncol = dummy, 0
    if p.cols:  # the wide tile's input as an explicit im2col, one launch before the block's
        ncol = p.grid[1] * p.bb * p.t_pad
        cols = torch.empty((C_in * K, ncol), dtype=dt, device=x.device)
        block_n = p.bb * p.t_pad
        _im2col_kernel[(triton.cdiv(C_in * K, IM2COL_BLOCK_R), p.grid[1])](
            x, *x.stride(), C1, x2 if x2 is not None else x, *_strides(x2), T_in, B, T_out, C_in * K, cols, ncol,
            K=K, MODE=_MODE_IDS[mode], HAS_X2=x2 is not None, PDL=p.pdl, T_PAD=p.t_pad, BLOCK_R=IM2COL_BLOCK_R,
            BLOCK_N=block_n, num_warps=NUM_WARPS, **({"launch_pdl": True} if p.pdl else {}),
        )
    # the epilogue's operands and switches, the same for the block's kernel and its finish launch
    gn_args = (gn.weight if gn else dummy, gn.bias if gn else dummy, C_out // gn.groups if gn else 1, scal)
    cond_args = (cond if cond is not None else dummy, cond_scale if cond_scale is not None else dummy,
                 cond.stride(0) if cond is not None else 0, cond_scale.stride(0) if cond_scale is not None else 0)
    step_args = (step.sample if step else dummy, *_strides(step.sample if step else None),
                 step.noise if step and step.noise is not None else dummy, *_strides(step.noise if step else None),
                 step.coefs if step else dummy)
    switches = dict(ACT=_ACT_IDS[act], GN=gn is not None,
                    COND=_COND_NONE if cond is None else (_COND_FILM if cond_scale is not None else _COND_ADD),
                    RES=res_kind, STEP=step is not None and head is None, HAS_NOISE=step is not None and step.noise is not None,
                    PDL=p.pdl, GPT=p.gpt, SPLIT=p.split, REGION=p.region, BB=p.bb, T_PAD=p.t_pad)
    pdl = {"launch_pdl": True} if p.pdl else {}
    probe = _probe_rows(p, x.device, C_in * K)
    _conv_block_kernel[p.grid](
        x, *x.stride(), C1,
        x2 if x2 is not None else x, *_strides(x2),
        weight, C_in * K, bias, B, T_in, T_out, C_out,
        *gn_args, *cond_args,
        residual if residual is not None else dummy, *_strides(residual), CR1,
        res_x2 if res_x2 is not None else dummy, *_strides(res_x2), RR,
        res_weight if res_weight is not None else dummy, res_bias if res_bias is not None else dummy,
        out, *out.stride(), *step_args,
        parts, counters, p.grid[1], p.chunks_per_split, p.res_chunks_per_split,
        cols, ncol, dummy if probe is None else probe,
        head.weight if head is not None else dummy, head.bias if head is not None else dummy, c.C_head, hparts, hcounters,
        HEAD=head is not None, HEAD_STEP=head is not None and step is not None, A_PAD=a_pad,
        K=K, MODE=_MODE_IDS[mode], HAS_X2=x2 is not None, HAS_R2=res_x2 is not None,
        PROBE=_PROBE_OFF if probe is None else _PROBE_FAKE if INTERPRETED else _PROBE_GPU,
        PREC=_precision(dt, tf32, p.wide), GEMV=p.gemv, WIDE=p.wide, AHEAD=p.ahead, DEPTH=p.depth, STAGES=p.stages,
        GEMV3D=p.gemv3d, COLS=p.cols, LATE_TRIGGER=PDL_TRIGGER == "late", PREFETCH_LINES=p.prefetch_lines, FINISH=p.finish > 0,
        TPG=p.tpg, BLOCK_CO=p.block_co, BLOCK_R=p.block_r, **switches,
        num_warps=p.num_warps, num_stages=NUM_STAGES, **pdl,
    )
    if p.finish:
        _conv_block_finish_kernel[(p.grid[0] // p.tpg, p.grid[1], p.finish)](
            parts, p.grid[1], B, T_out, C_out, bias, *gn_args, *cond_args,
            residual if residual is not None else dummy, *_strides(residual), res_bias if res_bias is not None else dummy,
            out, *out.stride(), *step_args,
            SUB_BB=p.bb // p.finish, **switches, num_warps=FINISH_NUM_WARPS, **pdl,
        )
    return out


conv_block.head_channels = head_channels()  # fused into the last block: build_program


def _precision(dt: torch.dtype, tf32: bool, wide: bool) -> int:
    if dt == torch.float64:
        return _PREC_FP64
    if dt == torch.bfloat16 and INTERPRETED:
        return _PREC_UPCAST
    if dt != torch.float32:
        return _PREC_IEEE
    if tf32:
        return _PREC_TF32
    return _PREC_TF32X3 if wide and FP32_WIDE_DOT == "tf32x3" else _PREC_IEEE


