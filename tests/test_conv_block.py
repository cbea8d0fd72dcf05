"""The fused conv_block of every fast backend (Triton, CUDA) against the PyTorch ops it
replaces, computed in float64.

On a machine without a GPU the Triton kernel runs in Triton's interpreter (conftest.py sets
TRITON_INTERPRET=1) and the CUDA kernel's source, compiled for the CPU, runs with a thread per
CUDA thread (backend "cuda-emulated", tests/emulation/), on small shapes; with a GPU both run
on it, and the `gpu` tests run them at the shapes of SPEC.md's workloads."""

import importlib
import math
import random

import pytest
import torch

pytest.importorskip("triton")

from dp_fast.ops.conv_block import GroupNormArgs, HeadArgs, StepArgs, conv_block_ref, out_length  # noqa: E402
from dp_fast import _ext  # noqa: E402
from dp_fast.triton.conv_block import INTERPRETED  # noqa: E402
from diag_scripts import load as load_diag  # noqa: E402
from emulation import load as emulation  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [
    pytest.param("triton", marks=pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason="needs a GPU or TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(DEVICE == "cpu" or not _ext.cuda_compiled(), reason="needs a GPU and the CUDA kernels")),
    # the CUDA kernel's source compiled for the CPU (tests/emulation/): its logic without a GPU
    pytest.param("cuda-emulated", marks=emulation.skip_unless_available()),
]


def _module(backend):
    return importlib.import_module(f"dp_fast.{backend.removesuffix('-emulated')}.conv_block")  # the module (the package exports the function)


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "cuda-emulated":
        op = emulation.conv_block()
        monkeypatch.setattr(_module("cuda"), "_operator", lambda device: op)
        # planned as on an H100: every CTA prefetches its weights (the emulation checks each address)
        monkeypatch.setattr(_module("cuda"), "dependent_launch", lambda device: True)
    return request.param


def _case(mode, k, c1, c2, c_out, t_in, batch, *, gn, act, cond, film, res, step, layout_btc, seed, dtype=torch.float64):
    """Random inputs (never zeros) for one conv_block call, on DEVICE."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(DEVICE, dtype)

    t_out = out_length(mode, t_in)
    if layout_btc:  # a (B, T, C) tensor read through its strides, as the network's first layer does
        x = r(batch, t_in, c1).transpose(1, 2)
    else:
        x = r(batch, c1, t_in)
    kw = dict(x2=r(batch, c2, t_in) if c2 else None, mode=mode, act=act)
    c_in = c1 + c2
    weight, bias = r(c_out, c_in, k, scale=1 / math.sqrt(c_in * k)), r(c_out)
    if gn:
        kw["gn"] = GroupNormArgs(gn, r(c_out) + 1, r(c_out))
    if cond:
        kw["cond"] = r(batch, c_out)
    if film:
        kw["cond_scale"] = r(batch, c_out) + 1
    if res == "identity":
        kw["residual"] = r(batch, c_out, t_out)
    elif res == "conv":
        kw.update(residual=r(batch, 3, t_out), res_x2=r(batch, 2, t_out), res_weight=r(c_out, 5), res_bias=r(c_out))
    if step:
        clip = 0.7
        kw["step"] = StepArgs(r(batch, t_out, c_out).transpose(1, 2), r(batch, t_out, c_out).transpose(1, 2), r(8).to(torch.float64), clip)
    return x, weight, bias, kw


def _kwargs_as(kw, dtype):
    """A case's keyword arguments with every tensor, GroupNorm's affine included, in ``dtype``
    (the step's, a StepArgs, as they are)."""
    out = {key: (v.to(dtype) if torch.is_tensor(v) else v) for key, v in kw.items()}
    if kw.get("gn") is not None:
        out["gn"] = GroupNormArgs(kw["gn"].groups, kw["gn"].weight.to(dtype), kw["gn"].bias.to(dtype), kw["gn"].eps)
    return out


CASES = [
    # mode, k, c1, c2, c_out, t_in, batch, gn, act, cond, film, res, step, layout_btc
    ("same", 3, 5, 0, 24, 16, 1, 8, "mish", True, True, None, False, True),  # Chi block 0 (FiLM) on the sample
    ("same", 5, 7, 0, 12, 8, 3, 4, "mish", False, False, "conv", False, False),  # Chi block 1, 1x1 residual
    ("same", 5, 12, 0, 12, 32, 2, 3, "mish", True, False, "identity", False, False),  # additive cond, identity residual
    ("same", 3, 6, 5, 10, 8, 3, 2, "mish", True, True, "conv", False, False),  # up path: skip read from x2
    ("same", 3, 9, 0, 13, 16, 1, None, "silu", True, False, None, False, False),  # lesson, odd channels
    ("down", 3, 11, 0, 11, 16, 3, None, "none", False, False, None, False, False),  # Downsample1d
    ("down", 3, 6, 0, 9, 7, 1, None, "silu", False, False, None, False, False),  # odd length
    ("up", 4, 7, 6, 13, 4, 3, None, "silu", False, False, None, False, False),  # lesson up2 (two inputs)
    ("up", 4, 10, 0, 10, 8, 1, None, "none", False, False, None, False, False),  # Upsample1d
    ("same", 1, 16, 0, 3, 16, 3, None, "none", False, False, None, True, False),  # final 1x1 conv + step
    ("same", 3, 10, 7, 7, 32, 2, None, "none", False, False, None, True, False),  # lesson final conv + step
    ("same", 3, 9, 4, 48, 8, 3, 2, "mish", True, True, "conv", False, False),  # 24 channels per group: 2 tiles
    ("same", 5, 6, 0, 40, 5, 2, 1, "silu", True, False, "identity", False, False),  # one group of 40, T=5
    ("same", 3, 8, 0, 16, 40, 2, 4, "mish", True, True, "conv", False, False),  # T=40: 64-column tiles
    ("up", 4, 5, 3, 9, 32, 2, None, "silu", False, False, None, False, False),  # T_out=64 (W5's horizon)
    ("same", 5, 30, 10, 24, 4, 1, 4, "mish", True, True, "conv", False, False),  # a long reduction (40 x 5): many chunks to split
    ("down", 3, 70, 0, 20, 8, 2, None, "none", False, False, None, False, False),  # 210 = 3 x 70: a ragged last chunk
    ("up", 4, 6, 5, 12, 4, 1, None, "silu", False, False, None, False, False),  # batch 1, T_out=8: GEMV, skip input, transposed
    ("same", 1, 16, 0, 3, 4, 2, None, "none", False, False, None, True, False),  # final 1x1 conv + step, 2 x 4 columns
    ("same", 5, 20, 0, 40, 8, 1, 2, "mish", True, True, "conv", False, True),  # batch 1, T=8, (B, T, C) input, 20-channel groups
    ("same", 3, 6, 0, 192, 8, 2, 12, "silu", True, True, "conv", False, False),  # 16-channel groups: 8 to a wide tile, the last tile half full
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}-c{c[2]}+{c[3]}->{c[4]}-T{c[5]}-B{c[6]}-gn{c[7]}-{c[8]}-res{c[11]}-step{c[12]}")
def test_conv_block_matches_float64_pytorch(case, backend):
    _check_case(case, _module(backend).conv_block)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}-c{c[2]}+{c[3]}->{c[4]}-T{c[5]}-B{c[6]}-gn{c[7]}-{c[8]}-res{c[11]}-step{c[12]}")
def test_conv_block_split_reduction_matches_float64_pytorch(case, backend, monkeypatch):
    """The reduction split over many programs, finished by the last one to arrive."""
    module = _module(backend)
    monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1000)
    monkeypatch.setattr(module, "MIN_CHUNKS_PER_SPLIT", 1)
    _check_case(case, module.conv_block)


# Columns up to which each backend's plan may pick the GEMV reduction: Triton's is a plan
# constant (forced up here, to run every narrow case that way); CUDA's is the kernel's own.
GEMV_COLUMNS = {"triton": 32, "cuda": 8, "cuda-emulated": 8}


@pytest.mark.parametrize("gemv", [False, True], ids=["tiled", "gemv"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-k{c[1]}-c{c[2]}+{c[3]}->{c[4]}-T{c[5]}-B{c[6]}-gn{c[7]}-{c[8]}-res{c[11]}-step{c[12]}")
def test_conv_block_both_reductions_match_float64_pytorch(case, gemv, backend, monkeypatch):
    """Both kernels reduce tiles of few columns the GEMV way (one accumulator per product, every
    row's weight streamed past each input value) and wider ones tiled (tl.dot in Triton, warps
    owning rows in CUDA): every case each way its width allows, split over many programs."""
    module = _module(backend)
    monkeypatch.setattr(module, "GEMV_MAX_COLUMNS", GEMV_COLUMNS[backend] if gemv else 0)
    monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1000)
    monkeypatch.setattr(module, "MIN_CHUNKS_PER_SPLIT", 1)
    _check_case(case, module.conv_block)


def _check_case(case, conv_block):
    mode, k, c1, c2, c_out, t_in, batch, gn, act, cond, film, res, step, btc = case
    x, w, b, kw = _case(mode, k, c1, c2, c_out, t_in, batch, gn=gn, act=act, cond=cond, film=film, res=res, step=step, layout_btc=btc, seed=hash(case) % 1000)
    expected = conv_block_ref(x, w, b, **kw)
    if step:
        got = conv_block(x, w, b, **kw)  # writes the stepped sample in place
        assert got.data_ptr() == kw["step"].sample.data_ptr()
    else:
        out = torch.full((batch, c_out, out_length(mode, t_in)), float("nan"), dtype=torch.float64, device=DEVICE)
        got = conv_block(x, w, b, out=out, **kw)
        assert got is out
    assert torch.isfinite(got).all(), "an output element was not written"
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


GEMV_CASES = [c for c in CASES if c[6] * max(out_length(c[0], c[5]), 1) <= 16]  # batch x T_out <= 16: Triton's GEMV tiles


@pytest.mark.parametrize("depth,stages", [(1, 0), (2, 0), (2, 4)], ids=["depth1", "depth2", "stages4"])
@pytest.mark.parametrize("case", GEMV_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-c{c[2]}+{c[3]}->{c[4]}-T{c[5]}-B{c[6]}")
def test_triton_gemv_loop_depth_matches_float64_pytorch(case, depth, stages, monkeypatch):
    """The GEMV loop with one or two chunks in flight ahead of the one it multiplies
    (GEMV_DEPTH), or as the plain loop Triton's pipeliner stages (GEMV_STAGES; the interpreter
    runs it unstaged, a GPU staged), whole reductions in one program (so every chunk, the ragged
    last one and the loads past the end included, passes through one loop) and split over
    programs."""
    tcb = _module("triton")
    monkeypatch.setattr(tcb, "GEMV_DEPTH", depth)
    monkeypatch.setattr(tcb, "GEMV_STAGES", stages)
    assert tcb.plan(1, 4, 24, 450, 0, 3, torch.float64, 4).depth == tcb.plan(1, 4, 24, 450, 0, 3, torch.float32, 4).depth == depth
    assert tcb.plan(1, 4, 24, 450, 0, 3, torch.bfloat16, 4).depth == 1  # bfloat16: one chunk ahead
    assert tcb.plan(1, 4, 24, 450, 0, 3, torch.float32, 4).stages == stages
    assert tcb.plan(1, 16, 24, 450, 0, 3, torch.float32, 4).stages == stages  # 16 columns: GEMV tiles too
    assert tcb.plan(2, 16, 24, 450, 0, 3, torch.float32, 4).stages == 0  # a tl.dot tile: Triton stages it anyway
    _check_case(case, tcb.conv_block)
    monkeypatch.setattr(tcb, "TARGET_PROGRAMS_PER_SM", 1)  # one program at a time: never worth a split
    monkeypatch.setattr(tcb, "sm_count", lambda device: 1)
    assert tcb.plan(1, 4, 24, 450, 0, 3, torch.float64, 1).split == 1
    _check_case(case, tcb.conv_block)


@pytest.mark.parametrize("max_columns,depth,stages", [(0, 1, 0), (16, 1, 0), (16, 2, 0), (16, 2, 4)],
                         ids=["2d", "3d-depth1", "3d-depth2", "3d-stages4"])
@pytest.mark.parametrize("case", GEMV_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-c{c[2]}+{c[3]}->{c[4]}-T{c[5]}-B{c[6]}")
def test_triton_gemv_3d_loads_match_float64_pytorch(case, max_columns, depth, stages, monkeypatch):
    """GEMV tiles whose chunks are loaded as 3-d tensors of the product's shape (GEMV_3D_MAX_COLUMNS:
    by default float32 and bfloat16 tiles of at most 4 columns; here every such GEMV tile at 16,
    none at 0), with one or two chunks ahead or as the pipelined loop, in float32 (float64 keeps the
    2-d loads): within float32's rounding of float64 PyTorch, as the 2-d loads are. The
    scheduler step's cases run without their step (the reduction is what differs)."""
    tcb = _module("triton")
    monkeypatch.setattr(tcb, "GEMV_3D_MAX_COLUMNS", max_columns)
    monkeypatch.setattr(tcb, "GEMV_DEPTH", depth)
    monkeypatch.setattr(tcb, "GEMV_STAGES", stages)
    for t_out in (1, 4, 8, 16):
        p = tcb.plan(1, t_out, 24, 450, 0, 3, torch.float32, 4)
        assert p.gemv and p.gemv3d == (p.bb * p.t_pad <= max_columns), p
        assert not tcb.plan(1, t_out, 24, 450, 0, 3, torch.float64, 4).gemv3d
    assert not tcb.plan(2, 16, 24, 450, 0, 3, torch.float32, 4).gemv3d  # a tl.dot tile
    mode, k, c1, c2, c_out, t_in, batch, gn, act, cond, film, res, _, btc = case
    x, w, b, kw = _case(mode, k, c1, c2, c_out, t_in, batch, gn=gn, act=act, cond=cond, film=film, res=res, step=False,
                        layout_btc=btc, seed=hash(case) % 1000)
    expected = conv_block_ref(x, w, b, **kw)
    out = torch.full((batch, c_out, out_length(mode, t_in)), float("nan"), dtype=torch.float32, device=DEVICE)
    got = tcb.conv_block(x.float(), w.float(), b.float(), out=out, **_kwargs_as(kw, torch.float32))
    assert got is out and torch.isfinite(got).all(), "an output element was not written"
    assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-6


def test_triton_gemv_3d_loads_by_default_at_four_columns_at_most():
    """GEMV_3D_MAX_COLUMNS' default (4): batch 1 at T=4 and less (W2's and W3's 1024- and
    2048-channel blocks) loads 3-d chunks in float32 and bfloat16; the GEMV tiles at 8 and 16
    columns, and float64's (16-row chunks, whose 3-d loop compiles to more instructions), 2-d ones."""
    tcb = _module("triton")
    assert tcb.GEMV_3D_MAX_COLUMNS == 4 and tcb.GEMV_MAX_COLUMNS == 16
    for dtype in (torch.float32, torch.bfloat16):
        assert [tcb.plan(1, t, 1024, 5120, 0, 8, dtype, 132).gemv3d for t in (2, 4, 8, 16)] == [True, True, False, False]
    assert not any(tcb.plan(1, t, 1024, 5120, 0, 8, torch.float64, 132).gemv3d for t in (2, 4, 8, 16))


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("t_in,batch", [(16, 3), (4, 1)], ids=["T16-B3", "T4-B1"])  # tl.dot and GEMV tiles in Triton
@pytest.mark.parametrize("gn,act", [(4, "mish"), (None, "silu")])
def test_conv_block_low_precision_is_within_its_rounding_of_float64(gn, act, t_in, batch, dtype, bound, backend):
    conv_block = _module(backend).conv_block
    x, w, b, kw = _case("same", 5, 12, 4, 16, t_in, batch, gn=gn, act=act, cond=True, film=gn is not None, res="conv", step=False, layout_btc=False, seed=7)
    expected = conv_block_ref(x, w, b, **kw)
    low = _kwargs_as(kw, dtype)
    out = torch.full((batch, 16, t_in), float("nan"), dtype=dtype, device=DEVICE)
    got = conv_block(x.to(dtype), w.to(dtype), b.to(dtype), out=out, **low)
    assert torch.isfinite(got).all(), "an output element was not written"
    assert ((got.double() - expected).norm() / expected.norm()).item() < bound


# (case, A): a block with the 1x1 convolution after it fused (``head``, Chi's final_conv: the last
# Conv1dBlock, then Conv1d(C, A, 1)), with and without the step: GroupNorm groups in one and in
# two tiles, several batch tiles, no GroupNorm, a FiLM block with a 1x1 residual conv, 12 groups
# of 16 channels, and heads of 1, 2, 7 and 17 channels (17: 32 unrolled rows, 15 masked).
# (CASES[16]: three regions without GroupNorm in the CUDA kernel's 8-row GEMV tiles.)
HEAD_CASES = [(CASES[1], 2), (CASES[11], 3), (CASES[4], 7), (CASES[19], 1), (CASES[13], 2), (CASES[20], 17), (CASES[16], 5)]


def _head_case(case, A, step, dtype=torch.float64):
    """A HEAD_CASES entry's inputs: (x, weight, bias, keyword arguments with ``head`` and, with
    ``step``, its StepArgs on the A-channel sample), the float64 PyTorch answer, and ``out``
    (poisoned) or None where the step writes the sample."""
    mode, k, c1, c2, c_out, t_in, batch, gn, act, cond, film, res, _, btc = case
    x, w, b, kw = _case(mode, k, c1, c2, c_out, t_in, batch, gn=gn, act=act, cond=cond, film=film, res=res, step=False,
                        layout_btc=btc, seed=hash((case, A)) % 1000)
    g = torch.Generator().manual_seed(A)
    r = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    kw["head"] = HeadArgs(r(A, c_out) / c_out ** 0.5, r(A))
    t_out = out_length(mode, t_in)
    if step:
        kw["step"] = StepArgs(r(batch, t_out, A).transpose(1, 2), r(batch, t_out, A).transpose(1, 2), r(8), 0.7)
    expected = conv_block_ref(x, w, b, **kw)  # before the kernel writes the sample in place
    low = _kwargs_as(kw, dtype)
    low["head"] = HeadArgs(kw["head"].weight.to(dtype), kw["head"].bias.to(dtype))
    if step:
        low["step"] = StepArgs(kw["step"].sample.to(dtype), kw["step"].noise.to(dtype), kw["step"].coefs, 0.7)
    out = None if step else torch.full((batch, A, t_out), float("nan"), dtype=dtype, device=DEVICE)
    return (x.to(dtype), w.to(dtype), b.to(dtype), low), expected, out


@pytest.mark.parametrize("step", [False, True], ids=["no-step", "step"])
@pytest.mark.parametrize("split", [False, True], ids=["plan", "split"])
@pytest.mark.parametrize("case,A", HEAD_CASES, ids=lambda v: f"A{v}" if isinstance(v, int) else f"{v[0]}-c{v[2]}+{v[3]}->{v[4]}-T{v[5]}-B{v[6]}-gn{v[7]}")
def test_head_matches_float64_pytorch(case, A, split, step, backend, monkeypatch):
    """The block, then its head, then the step, in one launch: the program (CTA) that finishes a
    region adds the region's share of the head's products, and the last region of each batch
    tile sums the shares, adds the bias and steps; every element of the (B, A, T) output
    written, float64 to 1e-10 as the plain block is; split over many programs too."""
    module = _module(backend)
    if split:
        monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1000)
        monkeypatch.setattr(module, "MIN_CHUNKS_PER_SPLIT", 1)
    (x, w, b, kw), expected, out = _head_case(case, A, step)
    got = module.conv_block(x, w, b, out=out, **kw)
    assert got is (kw["step"].sample if step else out)
    assert torch.isfinite(got).all(), "an output element was not written"
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gemv", [False, True], ids=["tiled", "gemv"])
@pytest.mark.parametrize("case,A", [HEAD_CASES[0], HEAD_CASES[3], HEAD_CASES[6]], ids=["gn4-A2", "gn2-B1-A1", "nogn-A5"])
def test_head_after_both_reductions_matches_float64_pytorch(case, A, gemv, backend, monkeypatch):
    """The head after either reduction (GEMV and tiled), split over many programs: the regions'
    shares are the same whatever computed the rows."""
    module = _module(backend)
    monkeypatch.setattr(module, "GEMV_MAX_COLUMNS", GEMV_COLUMNS[backend] if gemv else 0)
    monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1000)
    monkeypatch.setattr(module, "MIN_CHUNKS_PER_SPLIT", 1)
    (x, w, b, kw), expected, _ = _head_case(case, A, True)
    got = module.conv_block(x, w, b, **kw)
    assert torch.isfinite(got).all(), "an output element was not written"
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case,A", [HEAD_CASES[1], HEAD_CASES[5]], ids=["gn2-A3", "gn12-A17"])
def test_head_in_low_precision_is_within_its_rounding_of_float64(case, A, dtype, bound, backend):
    """The head in float32 and bfloat16 (weights and activations; float32 shares and sums)."""
    (x, w, b, kw), expected, out = _head_case(case, A, True, dtype)
    got = _module(backend).conv_block(x, w, b, out=out, **kw)
    assert torch.isfinite(got).all(), "an output element was not written"
    assert ((got.double() - expected).norm() / expected.norm()).item() < bound


@pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case,A", [HEAD_CASES[1], (CASES[3], 17)], ids=["gn2-A3", "skip-film-A17"])
def test_triton_head_on_wide_tiles_is_within_its_rounding_of_float64(case, A, dtype, bound, monkeypatch):
    """The head after wide (tensor-core) tiles, split, with the finish launch asked for: a head is
    finished by the block's last programs, so the plan keeps them (no finish launch)."""
    tcb = _module("triton")
    for name, value in (("WIDE_MIN_COLUMNS", 16), ("GEMV_MAX_COLUMNS", 0), ("WIDE_PROGRAMS_PER_SM", 1000),
                        ("MIN_CHUNKS_PER_SPLIT", 1), ("WIDE_FINISH", "kernel")):
        monkeypatch.setattr(tcb, name, value)
    plans = []
    planner = tcb.plan
    monkeypatch.setattr(tcb, "plan", lambda *a, **k: plans.append(planner(*a, **k)) or plans[-1])
    (x, w, b, kw), expected, out = _head_case(case, A, True, dtype)
    got = tcb.conv_block(x, w, b, out=out, **kw)
    assert plans[-1].wide and plans[-1].split > 1 and plans[-1].finish == 0, plans[-1]
    assert torch.isfinite(got).all(), "an output element was not written"
    assert ((got.double() - expected).norm() / expected.norm()).item() < bound


@pytest.mark.parametrize("change,error,match", [
    (dict(weight=(3, 5)), ValueError, r"head.weight must be contiguous \(A, C_out=6\), got \(3, 5\)"),
    (dict(bias=(2,)), ValueError, r"head.bias must be \(A,\) = \(3,\), got \(2,\)"),
    (dict(dtype=torch.float32), ValueError, r"the head's weight and bias must have the weight's dtype \(torch.float64\)"),
    (dict(out=(2, 6, 8)), ValueError, r"out must be \(B, A, T_out\) = \(2, 3, 8\), got \(2, 6, 8\)"),
    (dict(weight=(33, 6), bias=(33,)), ValueError, r"the kernels fuse a head of 1 to 32 channels, got 33"),
    (dict(weight=(0, 6), bias=(0,)), ValueError, r"the kernels fuse a head of 1 to 32 channels, got 0"),
])
def test_head_rejects_bad_arguments(change, error, match, backend):
    x = torch.randn(2, 4, 8, dtype=torch.float64, device=DEVICE)
    w, b = torch.randn(6, 4, 5, dtype=torch.float64, device=DEVICE), torch.randn(6, dtype=torch.float64, device=DEVICE)
    dt = change.get("dtype", torch.float64)
    head = HeadArgs(torch.randn(change.get("weight", (3, 6)), dtype=dt, device=DEVICE), torch.randn(change.get("bias", (3,)), dtype=dt, device=DEVICE))
    out = torch.empty(change["out"], dtype=torch.float64, device=DEVICE) if "out" in change else None
    with pytest.raises(error, match="conv_block: " + match):
        _module(backend).conv_block(x, w, b, head=head, out=out)


@emulation.skip_unless_available()
def test_cuda_operator_checks_the_head_and_its_scratch():
    """The operator's own head checks (csrc/conv_block_params.h), reached through the emulated
    kernel: weight and bias together, A within the kernels' widest head, the output with A
    channels, and room for the shares and the head's counters after the block's scratch."""
    op = emulation.conv_block()
    module = _module("cuda")
    f64 = dict(dtype=torch.float64)
    x, w, b = torch.randn(1, 4, 8, **f64), torch.randn(6, 4, 3, **f64), torch.randn(6, **f64)
    hw, hb = torch.randn(2, 6, **f64), torch.randn(2, **f64)
    config = module.plan(1, 8, 6, 12, 0, None, torch.float64, 4)  # one 8-column region, no split
    nc, n_tiles = config[3], config[12]
    parts, counters = torch.empty(nc * 2, **f64), torch.zeros(2, dtype=torch.int32)
    none, scalars = [None] * 11, [0.0, math.inf]
    out = torch.full((1, 2, 8), float("nan"), **f64)
    with pytest.raises(RuntimeError, match="a head needs head_weight and head_bias together"):
        op(x, None, w, b, *none, out, parts, counters, config, scalars, hw, None)
    with pytest.raises(RuntimeError, match=r"head_weight must be \(A, C_out=6\) with 1 <= A <= 32, got \[33, 6\]"):
        op(x, None, w, b, *none, out, parts, counters, config, scalars, torch.randn(33, 6, **f64), torch.randn(33, **f64))
    with pytest.raises(RuntimeError, match=r"out must be \(B=1, C=2, T=8\), got \[1, 6, 8\]"):
        op(x, None, w, b, *none, torch.empty(1, 6, 8, **f64), parts, counters, config, scalars, hw, hb)
    with pytest.raises(RuntimeError, match="parts must be a contiguous Double tensor of at least 16 elements"):
        op(x, None, w, b, *none, out, parts[:15], counters, config, scalars, hw, hb)
    with pytest.raises(RuntimeError, match="counters must be a contiguous int32 tensor of at least 2 zeros"):
        op(x, None, w, b, *none, out, parts, counters[:1], config, scalars, hw, hb)
    op(x, None, w, b, *none, out, parts, counters, config, scalars, hw, hb)
    assert n_tiles == 1 and counters.tolist() == [0, 0]  # the last arrival resets the head's counter
    torch.testing.assert_close(out, conv_block_ref(x, w, b, head=HeadArgs(hw, hb)), rtol=1e-12, atol=1e-12)


# Wide tiles only: GroupNorm groups of 256 channels, two 128-row tiles each (W3's 2048-channel
# blocks at large batches).
WIDE_CASES = CASES + [("same", 3, 8, 0, 512, 8, 2, 2, "mish", True, True, "conv", False, False)]


@pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-6), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("split,finish,depth", [(True, "last", 1), (True, "kernel", 1), (True, "kernel", 2), (False, "last", 2)],
                         ids=["split", "split-finish-kernel", "split-finish-kernel-depth2", "whole-depth2"])
@pytest.mark.parametrize("im2col", [False, True], ids=["gather", "im2col"])
@pytest.mark.parametrize("case", WIDE_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-c{c[2]}+{c[3]}->{c[4]}-T{c[5]}-B{c[6]}-gn{c[7]}-res{c[11]}-step{c[12]}")
def test_triton_wide_tiles_match_float64_within_their_rounding(case, im2col, split, finish, depth, dtype, bound, monkeypatch):
    """The tiles of large batches (tensor-core sized; float32 as three TF32 products on a GPU),
    forced here from 16 columns on, with the reduction split over many programs or walked by one,
    a split region finished by its last program or by a second launch (WIDE_FINISH), a bfloat16
    loop one or two chunks ahead (WIDE_DEPTH), the input gathered in the loop or read from an explicit
    im2col (IM2COL); GroupNorm groups of a power-of-2 size several to a tile: every element
    written, each result within its dtype's rounding of float64."""
    tcb = _module("triton")
    plans = []
    monkeypatch.setattr(tcb, "IM2COL", im2col)
    monkeypatch.setattr(tcb, "WIDE_FINISH", finish)
    monkeypatch.setattr(tcb, "WIDE_DEPTH", depth)
    monkeypatch.setattr(tcb, "WIDE_MIN_COLUMNS", 16)
    monkeypatch.setattr(tcb, "GEMV_MAX_COLUMNS", 0)
    if split:
        monkeypatch.setattr(tcb, "WIDE_PROGRAMS_PER_SM", 1000)
        monkeypatch.setattr(tcb, "MIN_CHUNKS_PER_SPLIT", 1)
    planner = tcb.plan
    monkeypatch.setattr(tcb, "plan", lambda *a, **k: plans.append(planner(*a, **k)) or plans[-1])
    mode, k, c1, c2, c_out, t_in, batch, gn, act, cond, film, res, step, btc = case
    x, w, b, kw = _case(mode, k, c1, c2, c_out, t_in, batch, gn=gn, act=act, cond=cond, film=film, res=res, step=step, layout_btc=btc, seed=19)
    expected = conv_block_ref(x, w, b, **kw)
    low = _kwargs_as(kw, dtype)
    if step:
        low["step"] = StepArgs(kw["step"].sample.to(dtype), kw["step"].noise.to(dtype), kw["step"].coefs, kw["step"].clip_range)
        got = tcb.conv_block(x.to(dtype), w.to(dtype), b.to(dtype), **low)
    else:
        got = tcb.conv_block(x.to(dtype), w.to(dtype), b.to(dtype), out=torch.full(expected.shape, float("nan"), dtype=dtype, device=DEVICE), **low)
    if batch * tcb._pow2(expected.shape[2]) >= 16:
        p = plans[-1]
        assert p.wide and p.num_warps == tcb.WIDE_NUM_WARPS and p.cols == im2col
        cpg = c_out // gn if gn else 0
        assert p.gpt == (min(tcb.WIDE_BLOCK_CO // cpg, tcb._pow2(gn)) if cpg and cpg & (cpg - 1) == 0 and cpg < tcb.WIDE_BLOCK_CO else 1)
        assert p.tpg == max(1, cpg // tcb.WIDE_BLOCK_CO)
        assert p.finish in ((0, 2, 4) if finish == "kernel" and p.tpg * p.split > 1 else (0,)), p
        assert p.depth == (depth if dtype == torch.bfloat16 and not im2col else 1), p
    assert torch.isfinite(got).all(), "an output element was not written"
    assert ((got.double() - expected).norm() / expected.norm()).item() < bound


def test_triton_finish_launch_plans_whole_batch_elements_a_program(monkeypatch):
    """DP_FAST_WIDE_FINISH=kernel: W4's 1024-channel block at T=4 (16 regions of 32 batch
    elements, 132 SMs) finished by 8 programs a region, 4 batch elements each; its T=16 blocks
    one batch element a program; W5's (batch 1 at T=64: a region holds one batch element) by
    the last of its programs as before; and some of the interpreter's wide cases (4 "SMs") by
    the launch, so that the tests above run it."""
    tcb = _module("triton")
    monkeypatch.setattr(tcb, "WIDE_FINISH", "kernel")
    w4 = tcb.plan(64, 4, 1024, 5120, 0, 8, torch.float32, 132)
    assert (w4.grid[0] // w4.tpg * w4.grid[1], w4.bb, w4.finish) == (16, 32, 8)
    w4_16 = tcb.plan(64, 16, 256, 1280, 0, 8, torch.bfloat16, 132)
    assert (w4_16.bb, w4_16.finish) == (8, 8)
    w5 = tcb.plan(1, 64, 2048, 10240, 0, 8, torch.float32, 132)
    assert w5.wide and w5.bb == 1 and w5.finish == 0
    monkeypatch.setattr(tcb, "WIDE_MIN_COLUMNS", 16)
    monkeypatch.setattr(tcb, "GEMV_MAX_COLUMNS", 0)
    monkeypatch.setattr(tcb, "WIDE_PROGRAMS_PER_SM", 1000)
    monkeypatch.setattr(tcb, "MIN_CHUNKS_PER_SPLIT", 1)
    plans = []
    for mode, k, c1, c2, c_out, t_in, batch, gn, *_ in WIDE_CASES:
        t_out = t_in if mode == "same" else (t_in + 1) // 2 if mode == "down" else 2 * t_in
        if batch * tcb._pow2(t_out) >= 16:
            plans.append(tcb.plan(batch, t_out, c_out, (c1 + c2) * k, 0, gn, torch.float32, 4))
    assert {p.finish for p in plans} >= {0, 2, 4}, plans


# (case, forced plan): GroupNorm groups over two tiles and two splits, with a 1x1 residual conv;
# a downsample split four ways; a program holding its whole region; wide tiles (a skip input, a
# 1x1 residual conv) finished by the last program or by a finish launch (whose programs are not
# probed: every main program is then a split one)
PROBE_CASES = [
    (CASES[19], "split"), (CASES[16], "split"), (CASES[0], "whole"),
    (CASES[3], "wide-last"), (CASES[3], "wide-kernel"),
]


@pytest.mark.parametrize("case,how", PROBE_CASES, ids=[f"{c[0]}-c{c[2]}->{c[4]}-gn{c[7]}-{h}" for c, h in PROBE_CASES])
def test_triton_probe_rows_are_written_by_every_program_without_changing_the_block(case, how, monkeypatch):
    """dp_fast.triton.conv_block.probing(): the same output, bit for bit, as the block
    unprobed; every program writes its row (poisoned before), its phases in order (in the
    interpreter each phase's number: started 0, waited 1000, reduced 2000, arrived 3000, ended
    4000); its role: exactly one program of a split region finished it, a program holding its
    region finished it alone. bench/diag/probe.py reads these rows on a GPU."""
    np = pytest.importorskip("numpy")
    tcb = _module("triton")
    probe = load_diag("probe")
    if how == "whole":
        monkeypatch.setattr(tcb, "TARGET_PROGRAMS_PER_SM", 1)
        monkeypatch.setattr(tcb, "sm_count", lambda device: 1)
    else:
        monkeypatch.setattr(tcb, "TARGET_PROGRAMS_PER_SM", 1000)
        monkeypatch.setattr(tcb, "WIDE_PROGRAMS_PER_SM", 1000)
        monkeypatch.setattr(tcb, "MIN_CHUNKS_PER_SPLIT", 1)
    if how.startswith("wide"):
        monkeypatch.setattr(tcb, "WIDE_MIN_COLUMNS", 16)
        monkeypatch.setattr(tcb, "GEMV_MAX_COLUMNS", 0)
        monkeypatch.setattr(tcb, "WIDE_FINISH", how.removeprefix("wide-"))
    mode, k, c1, c2, c_out, t_in, batch, gn, act, cond, film, res, step, btc = case
    x, w, b, kw = _case(mode, k, c1, c2, c_out, t_in, batch, gn=gn, act=act, cond=cond, film=film, res=res, step=False,
                        layout_btc=btc, seed=23, dtype=torch.float32)
    plain = tcb.conv_block(x, w, b, **kw)
    with tcb.probing() as records:
        probed = tcb.conv_block(x, w, b, **kw)
    assert torch.equal(probed, plain)
    (rec,) = records
    rows = rec.rows.cpu().numpy()
    probe.check_rows(rows)
    n0, n1, n2 = rec.grid
    assert rows.shape == (n0 * n1 * n2, len(tcb.PROBE_FIELDS)) and not rec.captured
    if INTERPRETED:  # a program holding its region arrives nowhere: its arrival is its reductions' end
        arrived = np.where((rows[:, 7] & 3) == tcb.PROBE_WHOLE, 2000, 3000)
        assert (rows[:, [0, 1, 2, 3, 4, 6]] == [0, 4000, 0, 1000, 2000, 4000]).all() and (rows[:, 5] == arrived).all(), rows
    roles = (rows[:, 7] & 3).reshape(n2, n1, n0)  # (split, batch tile, channel tile)
    assert rec.finish > 0 if how == "wide-kernel" else rec.finish == 0
    if rec.tpg * n2 == 1:
        assert how == "whole" and (roles == tcb.PROBE_WHOLE).all(), roles
    elif rec.finish:
        assert how == "wide-kernel" and (roles == tcb.PROBE_SPLIT).all(), roles
    else:
        # a region: a batch tile's rec.tpg consecutive channel tiles (a GroupNorm group) over every split
        per_region = roles.reshape(n2, n1, n0 // rec.tpg, rec.tpg).transpose(1, 2, 0, 3).reshape(n1, n0 // rec.tpg, -1)
        assert ((per_region == tcb.PROBE_LAST).sum(axis=2) == 1).all() and ((per_region == tcb.PROBE_SPLIT).sum(axis=2) == rec.tpg * n2 - 1).all(), roles
    assert how != "split" or rec.tpg * n2 > 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_triton_plan_takes_wide_tiles_for_large_batches_only(dtype):
    """W4's blocks (batch 64) get the tensor-core tiles: 128 rows (whole GroupNorm groups of a
    power-of-2 size, several to a tile), 32-row chunks, 8 warps, one wave of programs, float32
    as three TF32 products; batch 1 and float64 never do."""
    tcb = _module("triton")
    wide = tcb.plan(64, 4, 1024, 5120, 0, 8, dtype, 132)
    narrow = tcb.plan(1, 16, 1024, 5120, 0, 8, dtype, 132)
    assert not narrow.wide and narrow.num_warps == tcb.NUM_WARPS
    if dtype == torch.float32:
        assert tcb._precision(dtype, False, narrow.wide) == tcb._PREC_IEEE
    if dtype == torch.float64:
        assert not wide.wide
        return
    assert wide.wide and wide.num_warps == 8 and wide.block_co == 128 and wide.block_r == tcb.WIDE_BLOCK_R
    four = tcb.plan(64, 16, 256, 1280, 0, 8, dtype, 132)  # 32-channel groups: four to a tile
    assert (four.block_co, four.gpt, four.tpg, four.region, four.grid[0]) == (128, 4, 1, 128, 2)
    odd = tcb.plan(64, 16, 240, 1200, 0, 8, dtype, 132)  # 30-channel groups: a tile per group
    assert (odd.block_co, odd.gpt, odd.tpg, odd.grid[0]) == (32, 1, 1, 8)
    assert wide.region * wide.bb * wide.t_pad <= tcb.REGION_ELEMENTS_PER_WARP * wide.num_warps
    assert wide.grid[0] * wide.grid[1] * wide.grid[2] <= 132 < wide.grid[0] * wide.grid[1] * (wide.split + 1)  # one full wave
    if dtype == torch.float32:
        assert tcb._precision(dtype, False, True) == tcb._PREC_TF32X3
        assert tcb._precision(dtype, True, True) == tcb._PREC_TF32  # precision="tf32": plain TF32


def test_split_reduction_fills_one_wave_rather_than_spilling_into_a_second():
    """The split minimises waves x (chunks per split + 1): W2's 1024-channel blocks (32 tiles
    of 80 chunks, 2 x 132 programs at once) take 8 splits of 10 chunks (256 programs, one wave)
    where rounding the programs per SM up took 9 of 9 (288: a second wave of 24); a split that
    halves the chunks is worth a second wave; never an empty split, never below min_chunks
    but for the last."""
    from dp_fast.ops.conv_block import split_reduction

    assert split_reduction(32, 80, 264, 2) == (8, 10)
    assert split_reduction(64, 20, 264, 2) == (4, 5)  # the CUDA plan of the same block: 256 CTAs
    assert split_reduction(1024, 40, 264, 2) == (1, 40)  # more tiles than a wave: no split
    assert split_reduction(70, 6, 132, 1) == (3, 2)  # two waves of two chunks beat one of six
    assert split_reduction(8, 20, 10**6, 1) == (20, 1)  # room for all: every chunk its own split
    rng = random.Random(0)
    for _ in range(500):
        tiles, chunks, resident, least = rng.randint(1, 300), rng.randint(1, 400), rng.randint(1, 600), rng.randint(1, 3)
        split, per = split_reduction(tiles, chunks, resident, least)
        assert 1 <= split <= max(1, chunks // least) and (split - 1) * per < chunks <= split * per
        if tiles <= resident:  # one wave is possible: the plan never takes longer than the best one-wave plan
            one_wave = max(1, min(resident // tiles, chunks // least))
            assert -(-tiles * split // resident) * (per + 1) <= -(-chunks // one_wave) + 1


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_w2_batch1_plans_fit_one_wave_of_two_programs_per_sm(backend):
    """Every batch-1 block of W2's network on 132 SMs: one wave of two programs per SM (the
    H200 run of 2026-11-26: the blocks planned into a second wave ran 1.5x slower than blocks of
    the same bytes that fit one)."""
    module = _module(backend)
    shapes = [(16, 256, 1280, 2), (8, 512, 2560, 256), (4, 1024, 2560, 0), (4, 1024, 5120, 512), (4, 512, 10240, 0)]
    for t_out, c_out, r, rr in shapes:
        p = module.plan(1, t_out, c_out, r, rr, 8, torch.float32, 132)
        programs = p.grid[0] * p.grid[1] * p.grid[2] if backend == "triton" else p[11] * p[12] * p[8]
        assert programs <= 2 * 132, (t_out, c_out, r, programs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_triton_gemv_plan_keeps_its_accumulators_within_budget(dtype, monkeypatch):
    """GEMV tiles hold rows x chunk x columns accumulators: at least 16 rows, so wider tiles
    (DP_FAST_GEMV_MAX_COLUMNS=16: batch 1 at T=16) take shorter chunks; up to 8 columns the
    plans are the default's (64-row chunks, 16 in float64)."""
    tcb = _module("triton")
    monkeypatch.setattr(tcb, "GEMV_MAX_COLUMNS", 16)
    budget = tcb.GEMV_ACC_ELEMENTS // (4 if dtype == torch.float64 else 1)
    chunks = {4: 16, 8: 16, 16: 8} if dtype == torch.float64 else {4: 64, 8: 64, 16: 32}
    for t_out, block_r in chunks.items():
        p = tcb.plan(1, t_out, 256, 1280, 0, 8, dtype, 132)
        assert p.gemv and p.block_co >= 16 and p.block_co * p.block_r * p.bb * p.t_pad <= budget, (t_out, p)
        assert p.block_r == block_r, (t_out, p)


_KNOBS_SCRIPT = """
import importlib, json
tcb = importlib.import_module("dp_fast.triton.conv_block")
ccb = importlib.import_module("dp_fast.cuda.conv_block")
print(json.dumps([tcb.GEMV_DEPTH, tcb.GEMV_NUM_WARPS, tcb.GEMV_ACC_ELEMENTS, ccb.STAGED, tcb.PDL_TRIGGER, tcb.WIDE_FINISH, tcb.WIDE_DEPTH,
                  tcb.GEMV_3D_MAX_COLUMNS]))
"""


def _knobs(env):
    """The knobs' values as a fresh interpreter reads them from the environment `env` adds to
    one without any DP_FAST_ setting: (returncode, stdout, stderr)."""
    import os
    import subprocess
    import sys
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DP_FAST_")}
    run = subprocess.run([sys.executable, "-c", _KNOBS_SCRIPT], env={**clean, **env}, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=300)
    return run.returncode, run.stdout, run.stderr


def test_measured_defaults_and_their_knobs():
    """The defaults the H100's 2026-11-27 call chose (bench/results/README.md): Triton's GEMV
    loops one chunk ahead, 4 warps and 8192 accumulators a program; the CUDA chain without staged
    entries; and, untimed the other way, the dependent launch's trigger where it was (early) and
    wide tiles' regions finished by their last program, their loops one chunk ahead; and, untimed,
    GEMV tiles of up to 4 columns loading their chunks as 3-d tensors. Each knob reads its
    variable, and a bad value is an error that names it."""
    import json
    rc, out, err = _knobs({})
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1]) == [1, 4, 8192, False, "early", "last", 1, 4]
    rc, out, err = _knobs({"DP_FAST_GEMV_DEPTH": "2", "DP_FAST_GEMV_WARPS": "8", "DP_FAST_GEMV_ACC_ELEMENTS": "4096",
                           "DP_FAST_CUDA_STAGED": "1", "DP_FAST_PDL_TRIGGER": "late", "DP_FAST_WIDE_FINISH": "kernel",
                           "DP_FAST_WIDE_DEPTH": "2", "DP_FAST_GEMV_3D_MAX_COLUMNS": "16"})
    assert rc == 0, err
    assert json.loads(out.splitlines()[-1]) == [2, 8, 4096, True, "late", "kernel", 2, 16]
    for var, value in [("DP_FAST_GEMV_WARPS", "6"), ("DP_FAST_GEMV_ACC_ELEMENTS", "3000"), ("DP_FAST_GEMV_DEPTH", "3"),
                       ("DP_FAST_PDL_TRIGGER", "never"), ("DP_FAST_WIDE_FINISH", "first"), ("DP_FAST_WIDE_DEPTH", "0"),
                       ("DP_FAST_GEMV_3D_MAX_COLUMNS", "-1")]:
        rc, out, err = _knobs({var: value})
        assert rc != 0 and f"{var} must be" in err and value in err, (var, err[-500:])


def test_the_head_knob_turns_the_fused_output_conv_off():
    """DP_FAST_HEAD (default 1): 0 gives both backends' conv_block no head channels, so the fast
    path launches Chi's output conv on its own; a bad value is an error that names the variable."""
    import os
    import subprocess
    import sys
    script = ("import importlib; print(*(importlib.import_module(f'dp_fast.{b}.conv_block').conv_block.head_channels "
              "for b in ('triton', 'cuda')))")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DP_FAST_")}
    for env, want in (({}, ["32", "32"]), ({"DP_FAST_HEAD": "0"}, ["0", "0"]), ({"DP_FAST_HEAD": "yes"}, None)):
        run = subprocess.run([sys.executable, "-c", script], env={**clean, **env}, capture_output=True, text=True, timeout=300)
        if want is None:
            assert run.returncode != 0 and "DP_FAST_HEAD must be 0 or 1, got 'yes'" in run.stderr, run.stderr[-500:]
        else:
            assert run.returncode == 0 and run.stdout.split()[-2:] == want, run.stderr[-500:]


def test_triton_gemv_programs_take_gemv_warps(monkeypatch):
    """GEMV_NUM_WARPS (DP_FAST_GEMV_WARPS) sets the warps of GEMV programs only; the GEMV
    accumulator budget (DP_FAST_GEMV_ACC_ELEMENTS) their rows."""
    tcb = _module("triton")
    monkeypatch.setattr(tcb, "GEMV_NUM_WARPS", 8)
    assert tcb.plan(1, 4, 1024, 5120, 0, 8, torch.float32, 132).num_warps == 8  # GEMV
    assert tcb.plan(2, 16, 256, 1280, 0, 8, torch.float32, 132).num_warps == tcb.NUM_WARPS  # tl.dot
    assert tcb.plan(64, 4, 1024, 5120, 0, 8, torch.float32, 132).num_warps == tcb.WIDE_NUM_WARPS  # wide
    rows = tcb.plan(1, 4, 1024, 5120, 0, 8, torch.float32, 132).block_co
    monkeypatch.setattr(tcb, "GEMV_ACC_ELEMENTS", tcb.GEMV_ACC_ELEMENTS // 2)
    assert tcb.plan(1, 4, 1024, 5120, 0, 8, torch.float32, 132).block_co == rows // 2


def test_triton_plan_prefetches_chunks_ahead_in_the_register_loops_only(monkeypatch):
    """With LOOP_PREFETCH_CHUNKS > 0 (off by default) the GEMV and wide loops ask L2 for the
    weights that many chunks ahead when compiled for a GPU (inline PTX: never in the
    interpreter), where a chunk's row spans at least one 128-byte line; the tl.dot loop that
    Triton pipelines does not."""
    tcb = _module("triton")
    monkeypatch.setattr(tcb, "INTERPRETED", False)
    assert tcb.plan(1, 4, 1024, 5120, 0, 8, torch.float32, 132).ahead == tcb.LOOP_PREFETCH_CHUNKS
    ahead = 4
    monkeypatch.setattr(tcb, "LOOP_PREFETCH_CHUNKS", ahead)
    assert tcb.plan(1, 4, 1024, 5120, 0, 8, torch.float32, 132).ahead == ahead  # GEMV
    assert tcb.plan(1, 8, 512, 2560, 0, 8, torch.bfloat16, 132).ahead == ahead  # GEMV, one line of 64 bf16
    assert tcb.plan(64, 4, 1024, 5120, 0, 8, torch.float32, 132).ahead == ahead  # wide, one line of 32 fp32
    assert tcb.plan(64, 4, 1024, 5120, 0, 8, torch.bfloat16, 132).ahead == 0  # wide bf16: 64 bytes per row
    assert tcb.plan(1, 16, 256, 1280, 0, 8, torch.float32, 132).ahead == ahead  # GEMV at 16 columns: 32-row chunks, one line
    assert tcb.plan(2, 16, 256, 1280, 0, 8, torch.float32, 132).ahead == 0  # tl.dot, pipelined by Triton
    monkeypatch.setattr(tcb, "INTERPRETED", True)
    assert tcb.plan(1, 4, 1024, 5120, 0, 8, torch.float32, 132).ahead == 0


def test_conv_block_writes_a_strided_out_without_touching_the_rest(backend):
    conv_block = _module(backend).conv_block
    x, w, b, kw = _case("same", 3, 4, 0, 6, 8, 2, gn=None, act="silu", cond=False, film=False, res=None, step=False, layout_btc=False, seed=3)
    backing = torch.full((2, 8, 10), -7.0, dtype=torch.float64, device=DEVICE)  # (B, T, C) with spare channels
    out = backing[:, :, 2:8].transpose(1, 2)
    conv_block(x, w, b, out=out, **kw)
    torch.testing.assert_close(out, conv_block_ref(x, w, b, **kw), rtol=1e-10, atol=1e-10)
    assert (backing[:, :, :2] == -7).all() and (backing[:, :, 8:] == -7).all()


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(mode="sideways"), "mode must be one of"),
        (dict(act="relu"), "act must be one of"),
        (dict(weight_channels=5), "input channels"),
        (dict(mode="down"), "kernel size 5 does not fit mode 'down'"),
        (dict(gn=GroupNormArgs(5, None, None)), "not divisible by groups=5"),
        (dict(cond_scale_only=True), "cond_scale \\(FiLM\\) needs cond"),
        (dict(cond=torch.ones(2, 3)), "cond must be \\(B, C_out\\)"),
        (dict(out=torch.empty(2, 6, 9)), "out must be \\(B, C_out, T_out\\)"),
        (dict(residual=torch.ones(2, 5, 8)), "identity residual must have C_out channels"),
        (dict(t_in=256), "T_out <= (128|64)"),
        (dict(x2=torch.ones(2, 1, 8, dtype=torch.float32), weight_channels=5), "x2 must have x's dtype \\(torch.float64\\)"),
    ],
)
def test_conv_block_rejects_bad_arguments(change, match, backend):
    conv_block = _module(backend).conv_block
    change = dict(change)  # the parametrized dict is shared by every backend's run: never pop from it
    t_in = change.pop("t_in", 8)
    x = torch.randn(2, 4, t_in, dtype=torch.float64, device=DEVICE)
    w = torch.randn(6, change.pop("weight_channels", 4), 5, dtype=torch.float64, device=DEVICE)
    b = torch.randn(6, dtype=torch.float64, device=DEVICE)
    if change.pop("cond_scale_only", False):
        change["cond_scale"] = torch.ones(2, 6, dtype=torch.float64, device=DEVICE)
    change = {k: (v.to(DEVICE) if torch.is_tensor(v) else v) for k, v in change.items()}
    with pytest.raises(ValueError, match="conv_block: .*" + match):
        conv_block(x, w, b, **change)


@emulation.skip_unless_available()
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_cuda_kernel_prefetches_the_start_of_every_weight_slice(dtype, monkeypatch):
    """Programmatic dependent launch (kernels/conv_block.cuh): each CTA asks L2 for the first
    lines of its rows' share of the reduction, within the byte budget, and nothing outside the
    weights (the emulation checks every address). With a budget past the slices, every line of
    the weights is asked for; with one line's budget, exactly each slice's first line (by every
    batch tile's CTA)."""
    module = _module("cuda")
    op = emulation.conv_block()
    monkeypatch.setattr(module, "_operator", lambda device: op)
    monkeypatch.setattr(module, "dependent_launch", lambda device: True)
    monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1000)
    monkeypatch.setattr(module, "MIN_CHUNKS_PER_SPLIT", 1)
    for t_in, batch in [(4, 1), (16, 2)]:  # a GEMV tile and a tiled one
        x, w, b, kw = _case("same", 3, 101, 0, 21, t_in, batch, gn=None, act="silu", cond=False, film=False, res=None, step=False,
                            layout_btc=False, seed=5)
        x, w, b = x.to(dtype), w.to(dtype), b.to(dtype)
        line = 128
        base, size = w.data_ptr(), w.numel() * w.element_size()
        config = module.plan(batch, t_in, 21, 101 * 3, 0, None, dtype, 4, pdl=True)
        nc, split, per, co_tiles, n_tiles = config[3], config[8], config[9], config[11], config[12]
        rows, width = module.rows_per_cta(nc), per * module.chunk(dtype, nc)
        assert split > 1, "the case should split the reduction"

        monkeypatch.setattr(module, "PREFETCH_BYTES", 1 << 30)
        expected = conv_block_ref(x.double(), w.double(), b.double(), act="silu")
        got = module.conv_block(x, w, b, act="silu")
        torch.testing.assert_close(got.double(), expected, rtol=1e-10 if dtype == torch.float64 else 2e-2, atol=1e-10 if dtype == torch.float64 else 2e-2)
        assert {a // line for a in emulation.last_prefetches()} == set(range(base // line, (base + size - 1) // line + 1))

        monkeypatch.setattr(module, "PREFETCH_BYTES", line)
        module.conv_block(x, w, b, act="silu")
        first_lines = {(base + (row * 303 + s * width) * w.element_size()) // line
                       for row in range(min(co_tiles * rows, 21)) for s in range(split)}
        asked = emulation.last_prefetches()
        assert len(asked) == min(co_tiles * rows, 21) * split * n_tiles and {a // line for a in asked} == first_lines


# The CUDA kernel's weight ring (kernels/conv_block.cuh): tiles whose weight rows are whole
# 16-byte pieces. mode, K, C1, C2 (skip), C_out, T_in, batch, groups, 1x1 residual channels (two
# inputs), FiLM. The first four are GEMV tiles (8 columns or fewer), the others tiled.
RING_CASES = [
    ("same", 5, 12, 4, 24, 4, 1, 4, (5, 3), True),  # R = 80: one ragged stage; skip input, GroupNorm, 1x1 residual
    ("down", 3, 16, 0, 20, 8, 2, None, None, False),  # batch 2 x T_out 4: 8 columns
    ("up", 4, 6, 4, 12, 4, 1, None, None, False),  # transposed, T_out = 8
    ("same", 3, 704, 0, 9, 4, 1, None, (8, 0), False),  # R = 2112: nine stages, past every ring's length
    ("same", 5, 12, 4, 24, 16, 1, 4, (5, 3), True),  # 16 columns: the tiled reduction, one ragged chunk
    ("down", 3, 16, 0, 20, 16, 3, None, None, False),  # 16-column tiles of 2 x 8, two batch tiles
    ("same", 3, 352, 0, 9, 32, 1, None, (8, 0), False),  # 32 columns, 9 chunks (17 in float64): the ring wraps
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("split", [True, False], ids=["split", "whole"])
@pytest.mark.parametrize("case", RING_CASES, ids=lambda c: f"{c[0]}-k{c[1]}-c{c[2]}+{c[3]}->{c[4]}-T{c[5]}-B{c[6]}")
def test_cuda_weight_ring_matches_float64_pytorch(case, split, dtype, backend, monkeypatch):
    """Both reductions with their weights streamed through the ring of cp.async copies (RING),
    over stages that wrap around the ring and a ragged last one, split over many CTAs or walked
    by one, and with the weights in registers instead: every element within its dtype's rounding
    of float64. In the emulation (whose copies land only at the wait the kernel relies on, into
    poisoned shared memory) the copies read every 16-byte piece of the weights and nothing else."""
    if backend == "triton":
        pytest.skip("the weight ring is the CUDA kernel's")
    module = _module(backend)
    if not split:
        monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1)
        monkeypatch.setattr(module, "sm_count", lambda device: 1)
    else:
        monkeypatch.setattr(module, "TARGET_PROGRAMS_PER_SM", 1000)
        monkeypatch.setattr(module, "MIN_CHUNKS_PER_SPLIT", 1)
    mode, k, c1, c2, c_out, t_in, batch, gn, res, film = case
    x, w, b, kw = _case(mode, k, c1, c2, c_out, t_in, batch, gn=gn, act="mish" if gn else "silu", cond=film, film=film,
                        res=None, step=False, layout_btc=False, seed=17, dtype=dtype)
    if res:
        g = torch.Generator().manual_seed(18)
        t_out = out_length(mode, t_in)
        r = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)  # noqa: E731
        kw.update(residual=r(batch, res[0], t_out), res_x2=r(batch, res[1], t_out) if res[1] else None,
                  res_weight=r(c_out, sum(res)), res_bias=r(c_out))
    expected = conv_block_ref(x.double(), w.double(), b.double(), **_kwargs_as(kw, torch.float64))
    config = module.plan(batch, out_length(mode, t_in), c_out, (c1 + c2) * k, sum(res) if res else 0, gn, dtype,
                         module.sm_count(x.device))
    assert config[16] == 1 and (config[3] <= module.KERNEL_GEMV_COLUMNS) == (RING_CASES.index(case) < 4)
    assert config[8] == (-(-(c1 + c2) * k // module.chunk(dtype, config[3])) if split else 1)  # a split per stage, or none
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    for ring in (True, False):
        monkeypatch.setattr(module, "RING", ring)
        out = torch.full(expected.shape, float("nan"), dtype=dtype, device=DEVICE)
        got = module.conv_block(x, w, b, out=out, **kw)
        assert torch.isfinite(got).all(), "an output element was not written"
        if dtype == torch.bfloat16:
            assert ((got.double() - expected).norm() / expected.norm()).item() < tol
        else:
            torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
        if backend == "cuda-emulated":
            pieces = set()
            for t in [w] + ([kw["res_weight"]] if res else []):
                pieces |= set(range(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), 16))
            assert set(emulation.last_copies()) == (pieces if ring else set())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cuda_plan_takes_the_weight_ring_where_rows_are_whole_pieces(dtype, monkeypatch):
    """The plan asks for the ring (both reductions: GEMV tiles of 8 columns or fewer, tiled ones
    wider) where the weight rows, and the 1x1 residual's, are whole 16-byte pieces; not for other
    rows, or with RING off."""
    module = _module("cuda")
    per = 16 // dtype.itemsize  # values per piece
    assert module.plan(1, 4, 64, 40 * per, 0, 8, dtype, 132)[16] == 1
    assert module.plan(1, 8, 64, 40 * per, 2 * per, 8, dtype, 132)[16] == 1
    assert module.plan(1, 4, 64, 40 * per + 1, 0, 8, dtype, 132)[16] == 0  # a row ends mid-piece
    assert module.plan(1, 4, 64, 40 * per, per + 1, 8, dtype, 132)[16] == 0  # the residual's does
    assert module.plan(1, 16, 64, 40 * per, 0, 8, dtype, 132)[16] == 1  # 16 columns: the tiled reduction
    assert module.plan(3, 16, 64, 40 * per, 0, 8, dtype, 132)[16] == 1  # 64 columns
    assert module.plan(3, 16, 64, 40 * per - 1, 0, 8, dtype, 132)[16] == 0
    monkeypatch.setattr(module, "RING", False)
    assert module.plan(1, 4, 64, 40 * per, 0, 8, dtype, 132)[16] == 0


@emulation.skip_unless_available()
def test_cuda_weight_ring_needs_aligned_whole_pieces(monkeypatch):
    """The operator refuses a ring over weights whose rows end mid-piece (csrc/conv_block_params.h),
    and runs weights that do not start on a 16-byte boundary (a view one element into its
    storage; the plan cannot see it) through registers instead."""
    op = emulation.conv_block()
    module = _module("cuda")
    x, b = torch.randn(1, 5, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    w = torch.randn(6, 5, 3, dtype=torch.float64)  # R = 15: 120 bytes a row
    out = torch.empty(1, 6, 4, dtype=torch.float64)
    config = module.plan(1, 4, 6, 15, 0, None, torch.float64, 4)
    assert config[16] == 0
    config[16] = 1
    with pytest.raises(RuntimeError, match=r"the weight ring \(config\[16\] = 1\) takes a plan whose weight rows \(C_in \* K = 15 values"):
        op(x, None, w, b, *[None] * 11, out, b, b, config, [0.0, math.inf])
    off = torch.randn(6 * 4 * 3 + 1, dtype=torch.float64)[1:].view(6, 4, 3)  # R = 12: whole pieces, 8 bytes off
    x4 = x[:, :4]
    monkeypatch.setattr(module, "_operator", lambda device: op)
    assert module.plan(1, 4, 6, 12, 0, None, torch.float64, 4)[16] == 1
    got = module.conv_block(x4, off, b)
    assert emulation.last_copies() == []
    torch.testing.assert_close(got, conv_block_ref(x4, off, b), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("t_out,c_out,r,groups", [(4, 1024, 5120, 8), (16, 256, 1024, 8), (8, 2, 10, None), (16, 130, 774, 2)])
def test_triton_plan_prefetches_a_power_of_two_share_within_the_budget(t_out, c_out, r, groups, dtype):
    """The Triton kernel's weight prefetch (PDL only): a power-of-2 number of lines per row, at
    most PREFETCH_BYTES per program and no more lines than a row's slice spans (rounded up to a
    power of 2); none without PDL."""
    tcb = _module("triton")
    p = tcb.plan(1, t_out, c_out, r, 0, groups, dtype, 132, pdl=True)
    lines = p.prefetch_lines
    assert lines >= 1 and lines & (lines - 1) == 0
    assert lines * p.block_co * 128 <= max(tcb.PREFETCH_BYTES, p.block_co * 128)
    assert lines <= tcb._pow2(-(-p.chunks_per_split * p.block_r * dtype.itemsize // 128))
    assert tcb.plan(1, t_out, c_out, r, 0, groups, dtype, 132, pdl=False).prefetch_lines == 0


# -- full size on the GPU --------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("t_in", [8, 16, 32])
@pytest.mark.parametrize("c_in,c_out,k,gn", [(1024, 1024, 5, 8), (2 * 512, 256, 5, 8), (258, 130, 3, 2), (256, 2, 1, None)])
def test_conv_block_full_size_on_gpu(batch, t_in, c_in, c_out, k, gn, backend):
    _check_full_size(_module(backend).conv_block, batch, t_in, c_in, c_out, k, gn)


def _check_full_size(conv_block, batch, t_in, c_in, c_out, k, gn):
    """A float32 block of the given size against float64 PyTorch, poisoned output, SPEC.md's 1e-5."""
    x, w, b, kw = _case("same", k, c_in, 0, c_out, t_in, batch, gn=gn, act="mish" if gn else "none", cond=True, film=bool(gn), res="conv" if gn else None, step=False, layout_btc=False, seed=11, dtype=torch.float32)
    expected = conv_block_ref(x.double(), w.double(), b.double(), **_kwargs_as(kw, torch.float64))
    out = torch.full_like(expected, float("nan"), dtype=torch.float32)
    got = conv_block(x, w, b, out=out, **kw)
    assert torch.isfinite(got).all()
    assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("t_in", [8, 16, 32])
@pytest.mark.parametrize("A", [2, 7])
def test_last_block_with_its_head_and_step_full_size_on_gpu(batch, t_in, A, backend):
    """Chi's final Conv1dBlock of the PushT U-Net (256 channels, k=5, 8 groups, Mish) with its
    output conv and a step fused, in float32 against float64 PyTorch, SPEC.md's 1e-5."""
    x, w, b, kw = _case("same", 5, 256, 0, 256, t_in, batch, gn=8, act="mish", cond=False, film=False, res=None, step=False,
                        layout_btc=False, seed=13, dtype=torch.float32)
    g = torch.Generator().manual_seed(A)
    r = lambda *shape: torch.randn(shape, generator=g, dtype=torch.float64).to(DEVICE)
    head = HeadArgs(r(A, 256) / 16, r(A))
    sample, noise = (r(batch, t_in, A).transpose(1, 2) for _ in range(2))  # the policy's (B, T, A) layout
    step = StepArgs(sample, noise, r(8), 1.0)
    expected = conv_block_ref(x.double(), w.double(), b.double(), **_kwargs_as(kw, torch.float64), head=head, step=step)
    low = StepArgs(sample.float(), noise.float(), step.coefs, 1.0)
    got = _module(backend).conv_block(x, w, b, **kw, head=HeadArgs(head.weight.float(), head.bias.float()), step=low)
    assert got is low.sample and torch.isfinite(got).all()
    assert ((got.double() - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("t_in", [4, 16])
@pytest.mark.parametrize("c_in,c_out,k,gn", [(1024, 1024, 5, 8), (2 * 512, 256, 5, 8), (256, 2, 1, None)])
def test_triton_wide_finish_launch_full_size_on_gpu(c_in, c_out, k, gn, t_in, monkeypatch):
    """W4's blocks (batch 64) with their split regions finished by a launch of their own
    (DP_FAST_WIDE_FINISH=kernel)."""
    tcb = _module("triton")
    monkeypatch.setattr(tcb, "WIDE_FINISH", "kernel")
    plans = []
    planner = tcb.plan
    monkeypatch.setattr(tcb, "plan", lambda *a, **kw: plans.append(planner(*a, **kw)) or plans[-1])
    _check_full_size(tcb.conv_block, 64, t_in, c_in, c_out, k, gn)
    p = plans[-1]
    regions = p.grid[0] // p.tpg * p.grid[1]  # the launch takes a region where two SMs or more are there for it
    assert p.wide and (p.finish > 0) == (p.tpg * p.split > 1 and min(p.bb, tcb.sm_count(torch.device(DEVICE)) // regions) >= 2), p


@emulation.skip_unless_available()
def test_cuda_operator_rejects_what_the_python_front_would_not_pass():
    """The operator's own checks (csrc/conv_block_params.h), reached through the emulated kernel:
    a skip input of another dtype, a plan that does not cover the block, a kernel size past the
    kernels' tap split."""
    op = emulation.conv_block()
    module = _module("cuda")
    x, w, b = torch.randn(1, 4, 8, dtype=torch.float64), torch.randn(6, 6, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    x2 = torch.randn(1, 2, 8, dtype=torch.float32)
    out = torch.empty(1, 6, 8, dtype=torch.float64)
    config = module.plan(1, 8, 6, 18, 0, None, torch.float64, 4)
    none = [None] * 11
    with pytest.raises(RuntimeError, match=r"x2 must have x's dtype \(Double\), got Float"):
        op(x, x2, w, b, *none, out, b, b, config, [0.0, math.inf])
    config[11] = 0  # no output-channel tiles
    with pytest.raises(RuntimeError, match="the plan does not cover the block"):
        op(x, x2.double(), w, b, *none, out, b, b, config, [0.0, math.inf])
    # a kernel wider than the kernels' tap split (reduction index -> channel, tap) is exact for
    w33 = torch.randn(6, 6, 33, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"the kernels take K <= 31 and C_in \* K < 67108864, got K=33"):
        op(x, x2.double(), w33, b, *none, out, b, b, module.plan(1, 8, 6, 6 * 33, 0, None, torch.float64, 4), [0.0, math.inf])


def _sparse_floats(path, n):
    """n float32 zeros mapped from a sparse file: no disk blocks, no memory until touched."""
    with open(path, "wb") as f:
        f.truncate(n * 4)
    return torch.from_file(str(path), shared=True, size=n, dtype=torch.float32)


def test_conv_block_rejects_an_activation_past_32_bit_offsets(backend, tmp_path):
    """Both kernels index activations with 32-bit offsets: the front refuses an input whose
    strides reach 2^31 elements (its storage: a sparse file) with a ValueError naming it."""
    if DEVICE != "cpu":
        pytest.skip("the sparse file maps host memory; the check is the same on any device")
    far = _sparse_floats(tmp_path / "sparse.bin", (1 << 31) + 64).as_strided((2, 4, 8), (1 << 31, 8, 1))
    w, b = torch.randn(6, 4, 3), torch.randn(6)
    with pytest.raises(ValueError, match=r"conv_block: x spans 2147483680 elements; the kernels index an activation with 32-bit offsets"):
        _module(backend).conv_block(far, w, b)


@emulation.skip_unless_available()
def test_cuda_operator_rejects_an_activation_past_32_bit_offsets(tmp_path):
    """The kernels index activations with 32-bit offsets: an input whose strides reach 2^31
    elements is refused before any element is read (its storage: a sparse file, mapped)."""
    op = emulation.conv_block()
    module = _module("cuda")
    far = _sparse_floats(tmp_path / "sparse.bin", (1 << 31) + 64).as_strided((2, 4, 8), (1 << 31, 8, 1))
    w, b = torch.randn(6, 4, 3, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    out = torch.empty(2, 6, 8, dtype=torch.float64)
    config = module.plan(2, 8, 6, 12, 0, None, torch.float64, 4)
    with pytest.raises(RuntimeError, match=r"x spans 2147483680 elements; the kernels index an activation with 32-bit offsets"):
        op(far, None, w, b, *[None] * 11, out, b, b, config, [0.0, math.inf])
    near = far.as_strided((2, 4, 8), ((1 << 31) - 32, 8, 1))  # the last element at offset 2^31 - 1
    near.copy_(torch.randn(2, 4, 8))
    op(near, None, w, b, *[None] * 11, out, b, b, config, [0.0, math.inf])
    torch.testing.assert_close(out, conv_block_ref(near.double(), w, b), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("t_in,batch", [(4, 1), (16, 3)], ids=["T4-B1", "T16-B3"])
def test_back_to_back_blocks_read_what_the_one_before_wrote(t_in, batch, backend):
    """On sm_90 each launch is a programmatic dependent launch that starts while the one before
    it finishes (dp_fast.ops.conv_block.dependent_launch): a chain of blocks on one stream, with no
    synchronisation between them, each reading the previous block's output (poisoned before the
    chain runs), must equal the same chain in float64. Run several times to give a race a chance."""
    conv_block = _module(backend).conv_block
    c, depth = 1024, 6
    g = torch.Generator().manual_seed(13)
    blocks = [(torch.randn(c, c, 5, generator=g) / math.sqrt(5 * c), torch.randn(c, generator=g),
               GroupNormArgs(8, torch.randn(c, generator=g) + 1, torch.randn(c, generator=g))) for _ in range(depth)]
    x = torch.randn(batch, c, t_in, generator=g)
    expected = [x.double()]
    for w, b, gn in blocks:
        expected.append(conv_block_ref(expected[-1], w.double(), b.double(), act="mish",
                                       gn=GroupNormArgs(gn.groups, gn.weight.double(), gn.bias.double())))
    on = [(w.to(DEVICE), b.to(DEVICE), GroupNormArgs(gn.groups, gn.weight.to(DEVICE), gn.bias.to(DEVICE))) for w, b, gn in blocks]
    for _ in range(5):
        outs = [x.to(DEVICE)] + [torch.full((batch, c, t_in), float("nan"), device=DEVICE) for _ in blocks]
        torch.cuda.synchronize()
        for i, (w, b, gn) in enumerate(on):
            conv_block(outs[i], w, b, gn=gn, act="mish", out=outs[i + 1])
        torch.cuda.synchronize()
        for got, want in zip(outs[1:], expected[1:]):
            assert torch.isfinite(got).all()
            assert ((got.double().cpu() - want).norm() / want.norm()).item() < 1e-4
