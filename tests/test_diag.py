"""The diagnostics under bench/diag/ whose numbers the docs quote: their arithmetic, on the CPU."""

import importlib.util
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", "diag", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tf32_rounding_keeps_ten_mantissa_bits_to_nearest_ties_away():
    to_tf32 = _load("tf32x3_accuracy").to_tf32
    ulp = 2.0 ** -10  # of TF32 at 1.0
    x = torch.tensor([1 + ulp / 4, 1 + ulp / 2, 1 + 3 * ulp / 4, -(1 + ulp / 2), 3.0, 0.0])
    assert to_tf32(x).tolist() == [1.0, 1 + ulp, 1 + ulp, -(1 + ulp), 3.0, 0.0]
    a = torch.randn(4096)
    hi = to_tf32(a)
    lo = to_tf32(a - hi)
    assert ((hi - a).abs() <= a.abs() * 2.0 ** -11).all()  # half an ulp of 10 bits
    assert ((hi.double() + lo.double() - a.double()).abs() <= a.abs().double() * 2.0 ** -21).all()  # the split: about 21 bits
