"""Where the time of one network evaluation goes: every fused block of a workload's network,
timed alone (its launches captured in a CUDA graph and replayed), beside its weight bytes and
the time reading them once would take at the measured device bandwidth.

    python bench/blocks.py --workload W2-ddim16 --backend triton [--dtype bf16] [--blocks 12,18] [--out PATH]

Prints one row per block and the sum; the sum over-counts what a graph of the whole loop
takes by the gaps a graph hides, and under-counts nothing. GPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dp_fast import _fastpath  # noqa: E402
from dp_fast.benchmark import DTYPES, WORKLOADS, capture_graph, measure_bandwidth  # noqa: E402
from dp_fast.ops.conv_block import StepArgs  # noqa: E402

REPS = 50  # launches per captured graph


def _backend_conv_block(name: str):
    if name == "triton":
        from dp_fast.triton import conv_block
    elif name == "cuda":
        from dp_fast.cuda import conv_block
    else:
        raise SystemExit(f"unknown backend {name!r}: triton or cuda")
    return conv_block


def profile(workload: str, backend: str, dtype_name: str, only: set[int] | None = None) -> dict:
    device = torch.device("cuda")
    w = WORKLOADS[workload]
    policy = w.build_policy(device, torch.float32)
    policy.precision = dtype_name
    sampler = _fastpath.sampler_for(policy, backend, _backend_conv_block(backend))
    obs, noise = w.inputs(policy)
    acts = sampler._activations(noise)
    for a in acts.values():
        a.normal_()
    table = _fastpath.hoist(sampler.program, torch.tensor([10], device=device), policy._condition(obs))[0]
    coefs = torch.tensor([1.0, -0.1, 0.0, 1.0, 0.9, 0.1, 0.0, 0.0], dtype=torch.float64, device=device)
    step = StepArgs(acts["x"], None, coefs, 1.0)
    bandwidth = measure_bandwidth(device)
    rows = []
    for i, blk in enumerate(sampler.program.blocks):
        if only is not None and i not in only:
            continue
        one = _fastpath.Program([blk], sampler.program.channels, {}, 0, sampler.program.kind)
        scratch = dict(acts)
        if blk.step:
            scratch["x"] = acts["x"].clone()

        def launch():
            _fastpath.run_blocks(one, sampler.conv_block, scratch, table, step if blk.step else None)

        graph, _ = capture_graph(lambda: [launch() for _ in range(REPS)], warmup=1)
        graph.replay()
        times = []
        for _ in range(20):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            graph.replay()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) * 1e3 / REPS)
        times.sort()
        nbytes = sum(t.numel() * t.element_size() for t in _fastpath._program_tensors(one))  # this block's packed weights
        c_out, c_in, k = blk.weight.shape
        rows.append(dict(
            block=i, mode=blk.mode, c_in=c_in, c_out=c_out, k=k, t_out=acts[blk.out if not blk.step else "x"].shape[2],
            gn=blk.gn is not None, residual=blk.residual is not None and blk.res_weight is not None,
            us=times[len(times) // 2], weight_mb=nbytes / 1e6, floor_us=nbytes / bandwidth * 1e6,
        ))
    total = sum(r["us"] for r in rows)
    floor = sum(r["floor_us"] for r in rows)
    return dict(workload=workload, backend=backend, dtype=dtype_name, device=torch.cuda.get_device_name(),
                torch=torch.__version__, bandwidth_gbs=bandwidth / 1e9, rows=rows, total_us=total, floor_us=floor)


def format_report(rep: dict) -> str:
    lines = [f"{rep['workload']} {rep['backend']} {rep['dtype']} on {rep['device']} (bandwidth {rep['bandwidth_gbs']:.0f} GB/s)",
             f"{'#':>3} {'mode':>4} {'c_in':>5} {'c_out':>5} {'k':>2} {'T':>3} {'gn':>3} {'1x1':>3} {'us':>8} {'MB':>7} {'floor':>7} {'x':>5}"]
    for r in rep["rows"]:
        lines.append(f"{r['block']:>3} {r['mode']:>4} {r['c_in']:>5} {r['c_out']:>5} {r['k']:>2} {r['t_out']:>3} {'y' if r['gn'] else '-':>3} "
                     f"{'y' if r['residual'] else '-':>3} {r['us']:8.1f} {r['weight_mb']:7.2f} {r['floor_us']:7.1f} {r['us'] / max(r['floor_us'], 1e-9):5.1f}")
    lines.append(f"sum {rep['total_us']:.1f} us over {len(rep['rows'])} blocks; floor {rep['floor_us']:.1f} us ({rep['total_us'] / rep['floor_us']:.2f}x)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W2-ddim16", choices=list(WORKLOADS))
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--out", default=None, help="JSON path")
    parser.add_argument("--blocks", default=None, help="comma-separated block numbers to time (default: all), e.g. for ncu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/blocks.py needs a CUDA GPU")
    only = None if args.blocks is None else {int(b) for b in args.blocks.split(",")}
    rep = profile(args.workload, args.backend, args.dtype, only)
    print(format_report(rep))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rep, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
