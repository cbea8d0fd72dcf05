"""Where one ``sample()`` spends its time, kernel by kernel, as the sampler's own CUDA graph runs it:
one call profiled (CUPTI, through ``torch.profiler``) after warm-up, its kernels grouped into the
network's fused blocks, and per block (medians over the evaluations) its kernel time and its
start-to-start interval, the time the block adds to an evaluation. ``bench/blocks.py`` times
each block alone, back to back with itself; this reads the blocks in the order and company they
run in, so the gaps between launches, the overlap a programmatic dependent launch buys and the
weights coming from DRAM instead of L2 are in the numbers.

    python bench/diag/timeline.py --workload W1 --method triton [--dtype bf16] [--calls 3] [--trace PATH]

GPU only. A chain method (``cuda-chain``) runs an evaluation in one kernel, so it has no rows
per block; its kernel time is reported whole.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# A fused block's kernels: the block itself (Triton's _conv_block_kernel, the CUDA backend's
# conv_block_kernel), in front of it Triton's explicit im2col (DP_FAST_WIDE_IM2COL=1), and after
# it Triton's finish launch (DP_FAST_WIDE_FINISH=kernel).
BLOCK_KERNEL = re.compile(r"conv_block_kernel")
BLOCK_HELPER = re.compile(r"im2col")
BLOCK_TAIL = re.compile(r"conv_block_finish_kernel")
CHAIN_KERNEL = re.compile(r"conv_block_chain_kernel")
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


def device_events(trace: dict) -> list[tuple[str, float, float]]:
    """(name, start us, end us) of every kernel, copy and fill of a Chrome trace, by start."""
    events = [(e["name"], float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0)))
              for e in trace.get("traceEvents", []) if e.get("cat") in DEVICE_CATEGORIES and "ts" in e]
    return sorted(events, key=lambda e: e[1])


def group_blocks(events: list[tuple[str, float, float]]) -> tuple[list, list, list]:
    """(before, blocks, after): the events before the first block kernel (the hoisted
    conditioning, the copies in), the blocks (each a list of events around one block kernel: a
    block's im2col before it and its finish launch after it go with it), and the events after
    the last one."""
    ends = [i for i, e in enumerate(events) if BLOCK_KERNEL.search(e[0]) and not CHAIN_KERNEL.search(e[0])]
    if not ends:
        return events, [], []
    first = ends[0]
    while first > 0 and BLOCK_HELPER.search(events[first - 1][0]):
        first -= 1
    blocks, start = [], first
    for end in ends:
        while end + 1 < len(events) and BLOCK_TAIL.search(events[end + 1][0]):
            end += 1
        blocks.append(events[start : end + 1])
        start = end + 1
    return events[:first], blocks, events[start:]


def summarize(events: list[tuple[str, float, float]], blocks_per_eval: int) -> dict:
    """Per block of the network (medians over the evaluations): its kernels' time (first start
    to last end), its start-to-start interval (to the next block's first start; the last block
    of the call: to its own end) and the gap after it (next start minus this end: negative
    where a dependent launch overlaps the two). Totals for the call: its span (first event's
    start to last event's end), the blocks' part of it, and the busy time of the chain kernel
    when the call ran as one."""
    before, blocks, after = group_blocks(events)
    span = events[-1][2] - events[0][1] if events else 0.0
    chain = [e for e in events if CHAIN_KERNEL.search(e[0])]
    out = dict(span_us=span, before_us=sum(e[2] - e[1] for e in before), after_us=sum(e[2] - e[1] for e in after),
               kernels=len(events), chain_us=sum(e[2] - e[1] for e in chain), blocks=len(blocks), rows=[])
    if not blocks:
        return out
    if len(blocks) % blocks_per_eval:
        raise ValueError(f"{len(blocks)} block kernels is not a whole number of evaluations of {blocks_per_eval} blocks")
    starts = [b[0][1] for b in blocks]
    ends = [max(e[2] for e in b) for b in blocks]
    nexts = starts[1:] + [ends[-1]]
    for i in range(blocks_per_eval):
        idx = range(i, len(blocks), blocks_per_eval)
        out["rows"].append(dict(
            block=i,
            kernel_us=statistics.median(ends[j] - starts[j] for j in idx),
            interval_us=statistics.median(nexts[j] - starts[j] for j in idx),
            gap_us=statistics.median(nexts[j] - ends[j] for j in idx if j + 1 < len(blocks)) if len(blocks) > 1 else 0.0,
        ))
    out["evaluations"] = len(blocks) // blocks_per_eval
    out["blocks_us"] = ends[-1] - starts[0]
    out["blocks_us_per_eval"] = out["blocks_us"] / out["evaluations"]
    return out


def format_report(rep: dict, program_rows: list[dict]) -> str:
    lines = [f"{rep['workload']} {rep['method']} {rep['dtype']} on {rep['device']} (torch {rep['torch']}): "
             f"median of {rep['calls']} profiled sample() calls"]
    s = rep["summary"]
    lines.append(f"call span {s['span_us']:.1f} us, {s['kernels']} device events; before the first block {s['before_us']:.1f} us "
                 f"busy, after the last {s['after_us']:.1f} us busy")
    if s["chain_us"]:
        lines.append(f"chain kernel(s): {s['chain_us']:.1f} us busy")
    if s["rows"]:
        lines.append(f"blocks: {s['blocks_us']:.1f} us first start to last end over {s['evaluations']} evaluations, "
                     f"{s['blocks_us_per_eval']:.1f} us per evaluation")
        lines.append(f"{'#':>3} {'mode':>4} {'c_in':>5} {'c_out':>5} {'k':>2} {'gn':>3} {'kernel':>8} {'interval':>8} {'gap':>7}")
        for r, p in zip(s["rows"], program_rows):
            lines.append(f"{r['block']:>3} {p['mode']:>4} {p['c_in']:>5} {p['c_out']:>5} {p['k']:>2} {'y' if p['gn'] else '-':>3} "
                         f"{r['kernel_us']:8.2f} {r['interval_us']:8.2f} {r['gap_us']:7.2f}")
        lines.append(f"sum of the per-block medians: kernel {sum(r['kernel_us'] for r in s['rows']):.1f} us, "
                     f"interval {sum(r['interval_us'] for r in s['rows']):.1f} us per evaluation")
    return "\n".join(lines)


def network_blocks(policy) -> list[dict]:
    """The policy's network as the fast path runs it: its fused blocks in launch order, each's
    mode, channels, kernel size and GroupNorm (the rows of the reports)."""
    import torch

    from dp_fast import _fastpath

    return [dict(mode=b.mode, c_in=b.weight.shape[1], c_out=b.weight.shape[0], k=b.weight.shape[2], gn=b.gn is not None)
            for b in _fastpath.build_program(policy.model, torch.float32).blocks]  # a packed copy, dropped at once


def median_summary(summaries: list[dict]) -> dict:
    """Several summaries' medians (profiled calls, probed replays), field by field and row by row."""
    first = summaries[0]
    out = {k: statistics.median(s[k] for s in summaries) for k, v in first.items() if isinstance(v, (int, float))}
    out["rows"] = [{k: statistics.median(s["rows"][i][k] for s in summaries) for k in row} for i, row in enumerate(first["rows"])]
    return out


def profile(workload: str, method: str, dtype_name: str, calls: int, trace_path: str | None) -> tuple[dict, list[dict]]:
    import torch
    from torch.profiler import ProfilerActivity

    from dp_fast.benchmark import DTYPES, WORKLOADS, make_method

    device = torch.device("cuda")
    w = WORKLOADS[workload]
    policy = w.build_policy(device, DTYPES[dtype_name])
    obs, noise = w.inputs(policy)
    program_rows = network_blocks(policy)
    blocks_per_eval = len(program_rows)
    fn = make_method(method, policy, obs, noise, w.n_steps, "max-autotune-no-cudagraphs")
    for _ in range(3):  # capture, compile, autotune
        fn()
    torch.cuda.synchronize()
    summaries = []
    for call in range(calls):
        with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        with tempfile.TemporaryDirectory() as tmp:
            path = trace_path if trace_path and call == 0 else os.path.join(tmp, "trace.json")
            prof.export_chrome_trace(path)
            with open(path) as f:
                events = device_events(json.load(f))
        if not events:
            raise SystemExit("the profiler recorded no kernels (CUPTI unavailable, or kernels of a CUDA graph not traced)")
        summaries.append(summarize(events, blocks_per_eval))
    rep = dict(workload=workload, method=method, dtype=dtype_name, device=torch.cuda.get_device_name(),
               torch=torch.__version__, calls=calls, summary=median_summary(summaries))
    return rep, program_rows


def emit(text: str, rep: dict, program_rows: list[dict], out: str | None) -> None:
    """A report printed, and with its blocks written as JSON to `out` where given."""
    print(text)
    if out:
        with open(out, "w") as f:
            json.dump(dict(rep, program=program_rows), f, indent=1)


def main() -> int:
    from dp_fast.benchmark import DTYPES, WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W2-ddim16", choices=list(WORKLOADS))
    parser.add_argument("--method", default="triton", help="a benchmark method: triton, cuda, cuda-chain, reference+graph, ...")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--calls", type=int, default=3, help="sample() calls profiled, one profiler session each")
    parser.add_argument("--trace", default=None, help="where to write the first call's Chrome trace")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/diag/timeline.py needs a CUDA GPU")
    rep, program_rows = profile(args.workload, args.method, args.dtype, max(args.calls, 1), args.trace)
    emit(format_report(rep, program_rows), rep, program_rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
