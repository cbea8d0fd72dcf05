"""The host's part of one ``sample()``: the time a caller's thread spends in the call besides the
network's evaluations. The fast sampler's loop (the hoisted conditioning and the blocks) is
stubbed out, so what is timed is the rest of the call: the input checks, the weights' and the
schedule's checks, the capture cache's lookup, the step noise, the copies in and out. On the CPU
that is Python and PyTorch's dispatch (Triton's backend, its kernels interpreted but never
called). On a GPU it is the same plus the launches of the check, of the copies and of an empty
graph's replay, and the wait for the check's verdict. The host figures of bench/results/README.md
(stops 26 and 27) come from here, on this project's CPU machine.

    python bench/diag/host.py [--workloads W1,W2-ddim16] [--backend triton] [--device cpu]
                              [--number 300] [--repeat 9] [--json out.json]

Prints, per workload, µs a call (the best of ``repeat`` runs of ``number`` calls) with the
initial noise given and with it drawn by ``sample()``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import timeit


def measure(workload: str, backend: str, device: str, number: int, repeat: int) -> dict:
    """µs a call of the workload's ``sample()``, loop stubbed: {"given": .., "drawn": ..}."""
    import torch

    from dp_fast import _fastpath
    from dp_fast.benchmark import WORKLOADS

    w = WORKLOADS[workload]
    policy = w.build_policy(torch.device(device), torch.float32)
    obs, noise = w.inputs(policy)
    stub = _fastpath.FastSampler._loop
    _fastpath.FastSampler._loop = lambda self, cap: None
    try:
        policy.sample(obs, w.n_steps, noise=noise, backend=backend)  # the sampler and its (empty) capture
        out = {}
        for name, kw in (("given", dict(noise=noise)), ("drawn", {})):
            call = lambda: policy.sample(obs, w.n_steps, backend=backend, **kw)  # noqa: E731
            timeit.timeit(call, number=number)  # not counted: the first run after a build came out slower
            out[name] = min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6
        return out
    finally:
        _fastpath.FastSampler._loop = stub


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W1,W2-ddim16")
    ap.add_argument("--backend", default="triton", choices=["triton", "cuda"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--number", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: its kernels run nowhere here
    rows = []
    print(f"host work of one sample(), {args.backend} backend on {args.device}, loop stubbed out "
          f"(best of {args.repeat} x {args.number} calls, µs a call)")
    print(f"{'workload':<12} {'noise given':>12} {'noise drawn':>12}")
    for name in args.workloads.split(","):
        t = measure(name, args.backend, args.device, args.number, args.repeat)
        rows.append(dict(workload=name, backend=args.backend, device=args.device, us_noise_given=t["given"], us_noise_drawn=t["drawn"]))
        print(f"{name:<12} {t['given']:>12.1f} {t['drawn']:>12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    main()
