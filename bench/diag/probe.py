"""Where each block's time goes inside the sampler's CUDA graph, program by program: the Triton
kernel compiled with its probe (``dp_fast.triton.conv_block.probing``), each program reading its
SM's cycle counter at its start, after its wait for the previous launch, after its reductions,
after its arrival at its region's counter and at its end, and the GPU's global timer at its
start and end. ``bench/diag/timeline.py`` sees a kernel from outside (its start and end);
Nsight Compute sees one kernel alone, caches flushed and dependent launches off. This reads the
phases of every program of every block as the graph runs them, one replay after another.

    python bench/diag/probe.py --workload W2-ddim16 [--dtype fp32] [--replays 5] [--out PATH]

Per block of the network (medians over the evaluations of the replays, microseconds), where
"released" is the first of its programs through its wait, "prev end" the last program's end of
the block before:

- ``handoff``: released minus prev end. The previous grid's completion, its memory flush and
  the dependent launch's release, plus the loads nothing overlaps at the start of a block.
- ``work``: the last program's arrival (or, holding its whole region, the end of its
  reductions) minus released: the loops, their sum, the partial sums' store and the arrival,
  as long as the slowest program takes them, after the first one is let through.
- ``tail``: the block's last end minus the last arrival: the last program's finish (the partial
  sums' reload, the epilogue, the store) where a region is split; the epilogue where not.
- ``total``: handoff + work + tail, the block's share of an evaluation: summed over the blocks,
  an evaluation (the ``replay`` line says what the graph took by CUDA events).

And, to read them by: ``early`` (released minus the first program's start: how long before its
wait ended a program had started, the dependent launch's head start), ``skew`` (the last
program's release minus the first's: programs that could not start until others left their
SM), ``loop`` and ``loop max`` (a program's reductions, after its wait: its median and its
slowest), ``post`` (a split program's partial sums' store and arrival, median), ``progs`` and
``SMs``.

A program's phases are its cycle counter's, set on the global timer by its start and end (the
mean of the two offsets); the counter's rate is taken from the programs themselves (their
cycles over their global-timer spans, the long ones). The global timer's step on this GPU is
printed: coarse steps (a microsecond on some GPUs, finer while a profiler is attached, which is
why the replays run under ``torch.profiler`` by default) blur ``handoff`` and the block edges,
not the per-program phases. The probe costs each program a few instructions and one row of
stores (sm_90, Triton 3.6, ``bench/diag/triton_sass.py --probe``: 7-16 more registers, the same
main loop). GPU only; Triton backend only (the finish launch of DP_FAST_WIDE_FINISH=kernel is not
probed: its time falls into the next block's handoff).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# the probe rows' columns (dp_fast.triton.conv_block.PROBE_FIELDS)
GT_START, GT_END, CK_START, CK_WAITED, CK_REDUCED, CK_ARRIVED, CK_END, INFO = range(8)
ROLE_SPLIT, ROLE_LAST, ROLE_WHOLE = 0, 1, 2  # dp_fast.triton.conv_block.PROBE_SPLIT, ...
PHASES = ("start", "waited", "reduced", "arrived", "end")
COLUMNS = ("handoff", "work", "tail", "total", "early", "skew", "loop", "loop_max", "post")


def check_rows(rows: np.ndarray) -> None:
    """Every program wrote its row (the rows are poisoned with -1 before a replay) and each
    program's phases are in order."""
    if rows.ndim != 2 or rows.shape[1] != 8:
        raise ValueError(f"probe rows must be (programs, 8), got {rows.shape}")
    unwritten = np.flatnonzero((rows == -1).any(axis=1))
    if unwritten.size:
        raise ValueError(f"{unwritten.size} of {len(rows)} programs left their probe row unwritten (first: {unwritten[0]})")
    cycles = rows[:, [CK_START, CK_WAITED, CK_REDUCED, CK_ARRIVED, CK_END]]
    if (np.diff(cycles, axis=1) < 0).any() or (rows[:, GT_END] < rows[:, GT_START]).any():
        raise ValueError("a program's probe phases are out of order")


def cycles_per_ns(launches: list[np.ndarray], min_span_ns: float = 4000.0) -> float:
    """The cycle counters' rate: the programs' cycles over their global-timer spans, summed over
    the programs whose span is at least min_span_ns (all of them where none is)."""
    rows = np.concatenate(launches)
    spans = (rows[:, GT_END] - rows[:, GT_START]).astype(np.float64)
    cycles = (rows[:, CK_END] - rows[:, CK_START]).astype(np.float64)
    long = spans >= min_span_ns
    if not long.any():
        long = spans > 0
    if not long.any():
        raise ValueError("no program spans a step of the global timer: its rate cannot be measured")
    return float(cycles[long].sum() / spans[long].sum())


def timer_step_ns(launches: list[np.ndarray]) -> float:
    """The global timer's smallest step seen: the least positive difference between the sorted
    distinct readings (its resolution, or coarser)."""
    values = np.unique(np.concatenate([r[:, [GT_START, GT_END]].ravel() for r in launches]))
    steps = np.diff(values)
    return float(steps.min()) if steps.size else float("nan")


def phase_times(rows: np.ndarray, rate: float) -> np.ndarray:
    """(programs, 5) times in ns on the global timer of PHASES: each program's cycle counter
    placed by the mean of its start's and its end's offsets."""
    cycles = rows[:, [CK_START, CK_WAITED, CK_REDUCED, CK_ARRIVED, CK_END]].astype(np.float64)
    rel = (cycles - cycles[:, :1]) / rate
    offset = (rows[:, GT_START] + (rows[:, GT_END] - rel[:, -1])) / 2.0
    return offset[:, None] + rel


def launch_metrics(rows: np.ndarray, rate: float, prev_end: float | None) -> tuple[dict, float]:
    """One launch's numbers in us (module docstring), with its last end (ns) for the next."""
    t = phase_times(rows, rate)
    start, waited, reduced, arrived, end = (t[:, i] for i in range(5))
    role = rows[:, INFO] & 3
    released = waited.min()
    last_arrival = arrived.max()
    split = role != ROLE_WHOLE
    m = dict(
        handoff=(released - prev_end) / 1e3 if prev_end is not None else float("nan"),
        work=(last_arrival - released) / 1e3,
        tail=(end.max() - last_arrival) / 1e3,
        early=(released - start.min()) / 1e3,
        skew=(waited.max() - released) / 1e3,
        loop=float(np.median(reduced - waited)) / 1e3,
        loop_max=float((reduced - waited).max()) / 1e3,
        post=float(np.median((arrived - reduced)[split])) / 1e3 if split.any() else 0.0,
        programs=len(rows),
        sms=len(np.unique(rows[:, INFO] >> 2)),
    )
    m["total"] = m["handoff"] + m["work"] + m["tail"] if prev_end is not None else float("nan")
    return m, float(end.max())


def summarize(launches: list[np.ndarray], blocks_per_eval: int, rate: float | None = None) -> dict:
    """Per block of the network, the medians over the evaluations of launch_metrics, for one
    replay's launches in launch order (a whole number of evaluations)."""
    if not launches or len(launches) % blocks_per_eval:
        raise ValueError(f"{len(launches)} probed launches is not a whole number of evaluations of {blocks_per_eval} blocks")
    for rows in launches:
        check_rows(rows)
    rate = rate or cycles_per_ns(launches)
    metrics, prev_end = [], None
    for rows in launches:
        m, prev_end = launch_metrics(rows, rate, prev_end)
        metrics.append(m)
    evaluations = len(launches) // blocks_per_eval
    out = dict(evaluations=evaluations, cycles_per_ns=rate, timer_step_ns=timer_step_ns(launches), rows=[])
    for i in range(blocks_per_eval):
        ms = metrics[i::blocks_per_eval]
        row = dict(block=i, programs=ms[0]["programs"], sms=max(m["sms"] for m in ms))
        for k in COLUMNS:
            values = [m[k] for m in ms if not np.isnan(m[k])]
            row[k] = statistics.median(values) if values else float("nan")
        out["rows"].append(row)
    return out


def median_of(summaries: list[dict]) -> dict:
    """Several replays' summaries, field by field and row by row."""
    first = summaries[0]
    out = {k: statistics.median(s[k] for s in summaries) for k, v in first.items() if isinstance(v, (int, float))}
    out["rows"] = [{k: statistics.median(s["rows"][i][k] for s in summaries) for k in row} for i, row in enumerate(first["rows"])]
    return out


def format_report(rep: dict, program_rows: list[dict]) -> str:
    s = rep["summary"]
    lines = [f"{rep['workload']} triton {rep['dtype']} on {rep['device']} (torch {rep['torch']}, Triton {rep['triton']}), probed: "
             f"median of {rep['replays']} graph replays, {s['evaluations']} evaluations each; settings: {rep['settings']}",
             f"global timer step {s['timer_step_ns']:.0f} ns, SM clock {s['cycles_per_ns']:.3f} GHz (from the probes); "
             f"replay {rep['replay_us_per_eval']:.1f} us per evaluation by CUDA events (probed)"]
    head = f"{'#':>3} {'mode':>4} {'c_in':>5} {'c_out':>5} {'k':>2} {'gn':>3} {'progs':>5} {'SMs':>4}"
    lines.append(head + "".join(f" {c.replace('_', ' '):>8}" for c in COLUMNS))
    for r, p in zip(s["rows"], program_rows):
        lines.append(f"{r['block']:>3} {p['mode']:>4} {p['c_in']:>5} {p['c_out']:>5} {p['k']:>2} {'y' if p['gn'] else '-':>3}"
                     f" {r['programs']:>5} {r['sms']:>4}" + "".join(f" {r[c]:8.2f}" for c in COLUMNS))
    sums = {c: sum(r[c] for r in s["rows"] if not np.isnan(r[c])) for c in ("handoff", "work", "tail", "total")}
    lines.append("per evaluation: " + ", ".join(f"{c} {v:.1f} us" for c, v in sums.items())
                 + " (block 0's handoff: from the evaluation before; none for the first)")
    return "\n".join(lines)


def probe(workload: str, dtype_name: str, replays: int, profiler: bool) -> tuple[dict, list[dict]]:
    import importlib

    import torch
    import triton

    from dp_fast import _fastpath
    from dp_fast.benchmark import DTYPES, WORKLOADS, captured_graphs, replay_ms

    tcb = importlib.import_module("dp_fast.triton.conv_block")
    device = torch.device("cuda")
    w = WORKLOADS[workload]
    policy = w.build_policy(device, DTYPES[dtype_name])
    obs, noise = w.inputs(policy)
    program = _fastpath.build_program(policy.model, torch.float32).blocks
    program_rows = [dict(mode=b.mode, c_in=b.weight.shape[1], c_out=b.weight.shape[0], k=b.weight.shape[2], gn=b.gn is not None)
                    for b in program]
    blocks_per_eval = len(program)
    del program
    with tcb.probing() as records:
        policy.sample(obs, w.n_steps, noise=noise, backend="triton")  # captures the graph with its probes
    launches = [r for r in records if r.captured]
    if len(launches) != blocks_per_eval * w.n_steps:
        raise SystemExit(f"captured {len(launches)} probed launches, expected {blocks_per_eval} blocks x {w.n_steps} steps")
    (graph,) = captured_graphs(policy)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    summaries = []
    for _ in range(replays):
        for r in launches:
            r.rows.fill_(-1)  # poison: an unwritten row fails check_rows
        torch.cuda.synchronize()
        if profiler:  # CUPTI attached: a finer global timer on some GPUs
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]):
                graph.replay()
                torch.cuda.synchronize()
        else:
            graph.replay()
            torch.cuda.synchronize()
        summaries.append(summarize([r.rows.cpu().numpy() for r in launches], blocks_per_eval))
    replay_us = replay_ms(graph, device) * 1e3 / w.n_steps
    settings = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("DP_FAST_")) or "-"
    rep = dict(workload=workload, dtype=dtype_name, device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=triton.__version__, settings=settings, replays=replays, replay_us_per_eval=replay_us,
               summary=median_of(summaries))
    return rep, program_rows


def main() -> int:
    from dp_fast.benchmark import DTYPES, WORKLOADS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W2-ddim16", choices=list(WORKLOADS))
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--replays", type=int, default=5, help="probed replays of the graph (medians over them)")
    parser.add_argument("--profiler", action=argparse.BooleanOptionalAction, default=True,
                        help="replay under torch.profiler (CUPTI attached: a finer global timer on some GPUs)")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench/diag/probe.py needs a CUDA GPU")
    rep, program_rows = probe(args.workload, args.dtype, max(args.replays, 1), args.profiler)
    print(format_report(rep, program_rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(rep, program=program_rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
