"""How far from float64 one network evaluation lands when every convolution multiplies the way a
fast path might: float32 operands, plain TF32, or three TF32 products (tf32x3: each operand split
into a TF32 part and a TF32 remainder, hi*hi + hi*lo + lo*hi, as Triton's
``tl.dot(..., input_precision="tf32x3")`` computes it). Runs on the CPU in float64, rounding the
operands as the tensor cores would (round to nearest, ties away, to 10 mantissa bits:
cvt.rna.tf32.f32).

    python bench/diag/tf32x3_accuracy.py [--workload W4] [--batch 8]

Prints the relative error (Frobenius norm) of the network's output against float64 for each
product, with the convolutions accumulated in float64 (the operands' rounding alone) and in
float32 (PyTorch's CPU convolution; a GPU's order of summation differs); SPEC.md's bound for an
fp32 evaluation is 1e-5. Recorded in bench/results/README.md ("W4").
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dp_fast.benchmark import WORKLOADS  # noqa: E402

PRODUCTS = ("float32", "tf32x3", "tf32")


def to_tf32(a: torch.Tensor) -> torch.Tensor:
    """float32 ``a`` rounded to TF32 (10 mantissa bits; to nearest, ties away from zero)."""
    bits = a.float().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def _split(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = a.float()
    hi = to_tf32(a)
    return hi, to_tf32(a - hi)


def _rounded(conv, product: str, acc: torch.dtype):
    """``conv`` (F.conv1d or F.conv_transpose1d) with its input and weight rounded for
    ``product`` (both parts of a split are exact in float32), accumulated in ``acc``."""

    def run(x, w, b=None, *args, **kwargs):
        if product == "float32":
            y = conv(x.float().to(acc), w.float().to(acc), None, *args, **kwargs)
        else:
            (x_hi, x_lo), (w_hi, w_lo) = _split(x), _split(w)
            x_hi, x_lo, w_hi, w_lo = x_hi.to(acc), x_lo.to(acc), w_hi.to(acc), w_lo.to(acc)
            y = conv(x_hi, w_hi, None, *args, **kwargs)
            if product == "tf32x3":
                y = y + (conv(x_hi, w_lo, None, *args, **kwargs) + conv(x_lo, w_hi, None, *args, **kwargs))
        y = y.double()
        return y if b is None else y + b.double()[None, :, None]

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W4", choices=list(WORKLOADS))
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    w = WORKLOADS[args.workload]
    policy = w.build_policy(torch.device("cpu"), torch.float64)
    obs, noise = w.inputs(policy)
    x, cond = noise[: args.batch], policy._condition(obs[: args.batch])
    timestep = torch.full((x.shape[0],), 30)
    conv1d, conv_t = F.conv1d, F.conv_transpose1d
    with torch.no_grad():
        exact = policy.denoise(x, timestep, cond)
        print(f"{args.workload}, batch {x.shape[0]}: relative error of one evaluation against float64")
        for product in PRODUCTS:
            errors = []
            for acc in (torch.float64, torch.float32):
                F.conv1d, F.conv_transpose1d = _rounded(conv1d, product, acc), _rounded(conv_t, product, acc)
                try:
                    got = policy.denoise(x, timestep, cond)
                finally:
                    F.conv1d, F.conv_transpose1d = conv1d, conv_t
                errors.append(((got - exact).norm() / exact.norm()).item())
            print(f"{product:>8}: {errors[0]:.1e} accumulated in float64, {errors[1]:.1e} in float32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
