"""The compiled scheduler_step (csrc/scheduler_step.cpp, kernels/scheduler_step.cu) against
``scheduler_step_ref`` and against the formula written out here in float64."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import pytest
import torch

from dp_fast import _ext
from dp_fast.ops.scheduler_step import (
    COEF_NOISE_STD,
    COEF_PREV_FROM_EPS,
    COEF_PREV_FROM_SAMPLE,
    COEF_PREV_FROM_X0,
    COEF_EPS_FROM_OUTPUT,
    COEF_EPS_FROM_SAMPLE,
    COEF_X0_FROM_OUTPUT,
    COEF_X0_FROM_SAMPLE,
    NUM_COEFS,
    scheduler_step,
    scheduler_step_ref,
)

needs_ext = pytest.mark.skipif(
    not _ext.available(),
    reason="dp_fast._C is not built (pip install --no-build-isolation -e .)",
)
needs_cuda = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not _ext.cuda_compiled(), reason="dp_fast._C was built without CUDA"),
]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

SHAPES = [(1, 16, 2), (3, 8, 7), (64, 32, 7), (3, 32, 5), (1, 8, 1)]  # (batch, horizon, action_dim)
DTYPES = [torch.float32, torch.float64]
# Bound on |fast - exact| per unit of the summed magnitudes of every product (the scale from _step_float64).
ERROR_PER_SCALE = {torch.float32: 1e-6, torch.float64: 1e-12}


def _random_step(shape, dtype, device, clip: bool, with_noise: bool, seed: int):
    """Fresh random inputs: (model_output, sample, coefs (8,) float64, noise or None, clip_range)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    coefs = torch.randn(NUM_COEFS, generator=g, dtype=torch.float64)
    noise = None
    if with_noise:
        noise = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
        coefs[COEF_NOISE_STD] = 0.1 + torch.rand((), generator=g, dtype=torch.float64)
    else:
        coefs[COEF_NOISE_STD] = 0.0
    clip_range = math.inf
    if clip:  # clip about half of the predicted x0 values
        x0 = coefs[COEF_X0_FROM_SAMPLE] * x.double().cpu() + coefs[COEF_X0_FROM_OUTPUT] * m.double().cpu()
        clip_range = float(x0.abs().median())
    return m, x, coefs.to(device), noise, clip_range


def _step_float64(m, x, coefs, noise, clip_range):
    """The step written out in float64 from the scheduler's definition; also returns the error scale."""
    m, x = m.double().cpu(), x.double().cpu()
    c = coefs.double().cpu()
    x0_terms = (c[COEF_X0_FROM_SAMPLE] * x, c[COEF_X0_FROM_OUTPUT] * m)
    eps_terms = (c[COEF_EPS_FROM_SAMPLE] * x, c[COEF_EPS_FROM_OUTPUT] * m)
    x0 = torch.clamp(x0_terms[0] + x0_terms[1], min=-clip_range, max=clip_range)
    eps = eps_terms[0] + eps_terms[1]
    noise_term = torch.zeros_like(x) if noise is None else c[COEF_NOISE_STD] * noise.double().cpu()
    prev = c[COEF_PREV_FROM_X0] * x0 + c[COEF_PREV_FROM_EPS] * eps + c[COEF_PREV_FROM_SAMPLE] * x + noise_term
    # A rounding error bound is proportional to the magnitude of every product summed, not to
    # |prev| (the terms may cancel); this is that magnitude, per element.
    scale = (
        c[COEF_PREV_FROM_X0].abs() * (x0_terms[0].abs() + x0_terms[1].abs())
        + c[COEF_PREV_FROM_EPS].abs() * (eps_terms[0].abs() + eps_terms[1].abs())
        + (c[COEF_PREV_FROM_SAMPLE] * x).abs()
        + noise_term.abs()
    )
    return prev, scale


def _assert_within(actual, expected, scale, dtype, what):
    err = (actual.double().cpu() - expected.double().cpu()).abs()
    bound = ERROR_PER_SCALE[dtype] * (scale + 1.0)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"{what}: error {err.max().item():.3g} exceeds its bound (worst ratio {worst:.3g})"


def _check_step_matches_formula(device, shape, dtype, clip, with_noise, seed):
    m, x, coefs, noise, clip_range = _random_step(shape, dtype, device, clip, with_noise, seed)
    out = scheduler_step(m, x, coefs, noise, clip_range)

    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert out.data_ptr() not in (m.data_ptr(), x.data_ptr())
    assert not out.isnan().any()
    exact, scale = _step_float64(m, x, coefs, noise, clip_range)
    _assert_within(out, exact, scale, dtype, "vs float64 formula")
    _assert_within(out, scheduler_step_ref(m, x, coefs, noise, clip_range), 2 * scale, dtype, "vs scheduler_step_ref")
    if clip:  # the case really clips, and the clipped x0 enters the result
        unclipped, _ = _step_float64(m, x, coefs, noise, math.inf)
        assert (unclipped - exact).abs().max() > 1e3 * ERROR_PER_SCALE[dtype] * (scale.max() + 1)


@needs_ext
@pytest.mark.parametrize("with_noise", [False, True], ids=["no_noise", "noise"])
@pytest.mark.parametrize("clip", [False, True], ids=["no_clip", "clip"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_scheduler_step_matches_float64_formula(device, shape, dtype, clip, with_noise):
    seed = SHAPES.index(shape) * 4 + 2 * clip + with_noise
    _check_step_matches_formula(device, shape, dtype, clip, with_noise, seed)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_scheduler_step_accepts_non_contiguous_inputs(device):
    m, x, coefs, noise, clip_range = _random_step((3, 7, 16), torch.float32, device, True, True, seed=7)
    m, x, noise = m.transpose(1, 2), x.transpose(1, 2), noise.transpose(1, 2)  # (3, 16, 7) views
    out = scheduler_step(m, x, coefs, noise, clip_range)
    exact, scale = _step_float64(m, x, coefs, noise, clip_range)
    _assert_within(out, exact, scale, torch.float32, "non-contiguous")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_scheduler_step_ignores_noise_when_sigma_is_zero(device):
    m, x, coefs, noise, _ = _random_step((3, 16, 7), torch.float64, device, False, True, seed=3)
    coefs[COEF_NOISE_STD] = 0.0
    torch.testing.assert_close(scheduler_step(m, x, coefs, noise), scheduler_step(m, x, coefs, None), rtol=0, atol=0)


def _bad_inputs(device):
    """(what is wrong, kwargs of torch.ops.dp_fast.scheduler_step, regex of the expected message)."""
    m, x, coefs, noise, _ = _random_step((3, 16, 7), torch.float32, device, False, True, seed=11)
    good = dict(model_output=m, sample=x, coefs=coefs, noise=noise, clip_range=math.inf)
    cases = [
        ("shape_mismatch", dict(model_output=m[:, :8]), r"model_output must match sample \(shape \[3, 16, 7\]"),
        ("noise_shape_mismatch", dict(noise=noise[..., :6]), r"noise must match sample \(shape \[3, 16, 7\]"),
        ("int_sample", dict(sample=x.to(torch.int32), model_output=m.to(torch.int32), noise=None),
         r"sample must be float32 or float64, got Int"),
        ("float16_sample", dict(sample=x.half(), model_output=m.half(), noise=noise.half()),
         r"sample must be float32 or float64, got Half"),
        ("dtype_mismatch", dict(model_output=m.double()), r"model_output must match sample .*Float"),
        ("coefs_wrong_shape", dict(coefs=torch.cat([coefs, coefs[:1]])), r"coefs must be float64 of shape \(8,\)"),
        ("coefs_table_not_row", dict(coefs=coefs.expand(2, NUM_COEFS)), r"coefs must be float64 of shape \(8,\)"),
        ("coefs_float32", dict(coefs=coefs.float()), r"coefs must be float64 of shape \(8,\)"),
        ("clip_range_zero", dict(clip_range=0.0), r"clip_range must be > 0"),
    ]
    if device == "cpu":  # the CUDA kernel cannot read sigma without a host sync; see the NaN test
        cases.append(("noise_none_with_sigma", dict(noise=None), r"adds noise \(sigma != 0\) but noise is None"))
    else:
        cases.append(("coefs_on_host", dict(coefs=coefs.cpu()), r"coefs must be float64 of shape \(8,\) on sample's device"))
    return [(name, {**good, **change}, match) for name, change, match in cases]


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_scheduler_step_op_rejects_bad_inputs_naming_what_was_expected(device):
    op = _ext.ops().scheduler_step
    for name, kwargs, match in _bad_inputs(device):
        with pytest.raises(RuntimeError, match=match):
            op(**kwargs)
            pytest.fail(f"{name}: no error")


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
def test_scheduler_step_wrapper_rejects_bad_inputs(device):
    for name, kwargs, _ in _bad_inputs(device):
        if name in ("coefs_on_host", "coefs_float32"):  # the wrapper converts coefs by design
            continue
        with pytest.raises((TypeError, ValueError, RuntimeError), match=r"scheduler_step: .*(must|noise is None)"):
            scheduler_step(**kwargs)
            pytest.fail(f"{name}: no error")


@needs_ext
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=needs_cuda)])
def test_scheduler_step_cuda_poisons_output_when_noise_missing(device):
    m, x, coefs, _, _ = _random_step((3, 16, 7), torch.float32, device, False, True, seed=5)
    out = scheduler_step(m, x, coefs, None)
    assert out.isnan().all(), "sigma != 0 without noise must not silently drop the noise term"


@needs_ext
@pytest.mark.parametrize("dtype", [pytest.param(d, marks=needs_cuda) for d in DTYPES], ids=str)
def test_scheduler_step_cuda_graph_replay_reads_new_coefs(dtype):
    m, x, coefs, noise, clip_range = _random_step((3, 16, 7), dtype, "cuda", True, True, seed=9)
    op = _ext.ops().scheduler_step
    static_coefs = coefs.clone()
    op(m, x, static_coefs, noise, clip_range)  # warm-up outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = op(m, x, static_coefs, noise, clip_range)
    _, _, new_coefs, _, _ = _random_step((3, 16, 7), dtype, "cuda", True, True, seed=10)
    static_coefs.copy_(new_coefs)
    static_out.fill_(float("nan"))
    graph.replay()
    exact, scale = _step_float64(m, x, new_coefs, noise, clip_range)
    _assert_within(static_out, exact, scale, dtype, "graph replay")


@needs_ext
def test_scheduler_step_fake_kernel_passes_opcheck():
    m, x, coefs, noise, clip_range = _random_step((3, 16, 7), torch.float32, "cpu", True, True, seed=13)
    op = _ext.ops().scheduler_step.default
    torch.library.opcheck(op, (m, x, coefs, noise, clip_range))
    coefs[COEF_NOISE_STD] = 0.0
    torch.library.opcheck(op, (m, x, coefs, None, math.inf))


@needs_ext
def test_scheduler_step_runs_inside_torch_compile_fullgraph():
    m, x, coefs, noise, clip_range = _random_step((3, 16, 7), torch.float32, "cpu", True, True, seed=17)
    op = _ext.ops().scheduler_step

    def two_steps(m, x, coefs, noise):
        return op(m * 0.5, op(m, x, coefs, noise, clip_range), coefs, noise, clip_range) + 1.0

    compiled = torch.compile(two_steps, fullgraph=True)
    torch.testing.assert_close(compiled(m, x, coefs, noise), two_steps(m, x, coefs, noise), rtol=0, atol=0)


def test_extension_has_cuda_kernels_when_required():
    """CI sets DP_FAST_REQUIRE_CUDA=1 for build and test: the CUDA sources must have compiled."""
    if os.environ.get("DP_FAST_REQUIRE_CUDA", "") != "1":
        pytest.skip("DP_FAST_REQUIRE_CUDA is not set to 1")
    assert _ext.available(), "DP_FAST_REQUIRE_CUDA=1 but dp_fast._C does not import"
    assert _ext.cuda_compiled(), "DP_FAST_REQUIRE_CUDA=1 but dp_fast._C was built without its CUDA kernels"


@needs_ext
@pytest.mark.skipif(shutil.which("nm") is None, reason="needs binutils' nm")
def test_extension_links_the_shared_cxx_library():
    """A compiler that links libstdc++ statically (the lent GPU machines' CXX, 2026-11) gives the
    extension a private copy whose locale nothing initialises: the first error message with a
    number in it crashed the process. setup.py names the shared library; this checks that no part
    of the C++ library was copied into dp_fast._C (std::ostream's insertion of a long, the
    function that crashed)."""
    from dp_fast import _C

    symbols = subprocess.run(["nm", "-D", "--defined-only", _C.__file__], capture_output=True, text=True, check=True).stdout
    copied = [line for line in symbols.splitlines() if "_ZNSo9_M_insertI" in line]
    assert not copied, f"{_C.__file__} defines C++ library functions itself (linked libstdc++.a?): {copied}"
