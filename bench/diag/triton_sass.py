"""What the Triton conv_block kernel compiles to on a GPU we do not have: every block of a
workload's network, compiled for a target (default sm_90, the H100) on this machine, with no
GPU and no device time. Per block: the plan (product kind: "dot", "gemv", "gemv3" for a GEMV
tile loading its chunks as 3-d tensors; tile, split, grid), the compiler's
resource report (registers, local-memory and stack bytes, shared memory), and of the main
reduction loop: its instructions per weight element ("instr/w"), its local-memory (spill)
accesses ("lmem"), its L2 prefetches of the weights chunks ahead ("lpf"), its asynchronous copies
to shared memory ("cpa": cp.async, which Triton's pipeliner stages loads with), its tensor-core
products ("mma"), its shared-memory loads and stores and its CTA barriers ("lds", "sts", "bar":
what Triton's layout changes between a chunk's loads and its products cost), its multiply-adds
per warp instruction ("MAC/i"; an FFMA loop issues at most 32), and the microseconds all SMs need to issue every program's trips of it ("issue": a lower
bound of a block bound by instruction issue, at --clock-ghz); for a programmatic dependent
launch (--pdl, the default), the L2 prefetch instructions ("pf") and the global memory
instructions placed before the wait for the previous launch ("early", with its finish launch's:
must be 0; -1 means no wait), and where it lets the next launch start ("trig": "early" before its main loop, "late"
after it; DP_FAST_PDL_TRIGGER); the instructions a warp of every program issues after its main
loop up to its arrival at its region's counter ("post": the sum of its products, its partial
sums' store, the epilogue's operands); and the programs that finish its split regions ("fin": one a
region, or a finish launch's with DP_FAST_WIDE_FINISH=kernel) with the instructions a warp of
one issues to finish ("tail": the last program's after its arrival, the walk over the splits'
partial sums counted once a split, or a finish launch's program's).

    python bench/diag/triton_sass.py [--workload W2-ddim16] [--dtype fp32] [--sms 132] [--arch 90] [--blocks 11,18] [--no-pdl]

A block whose loop needs many instructions per weight element is bound by issuing them, not by
memory: on the H100 (2026-11-25) the W2 blocks' times tracked the instructions of their loops,
not their bytes (bench/results/README.md). Needs Triton's CUDA backend (ptxas and cuobjdump
ship with the triton wheel); runs on the CPU.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, do not interpret

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.compiler import compile as triton_compile  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from dp_fast import _fastpath  # noqa: E402
from dp_fast.benchmark import DTYPES, WORKLOADS, knob_settings  # noqa: E402
from dp_fast.ops.conv_block import StepArgs  # noqa: E402

tcb = importlib.import_module("dp_fast.triton.conv_block")  # the module (the package exports the function)
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_SASS_LINE = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_PRODUCTS = ("FFMA", "DFMA", "HMMA", "HGMMA")  # multiply-adds: CUDA-core fp32/fp64, tensor-core (mma.sync, Hopper wgmma)
_BACK_BRANCH = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\s+0x([0-9a-f]+)")


class _Launch:
    """Stands in for the kernel: records one launch's arguments instead of running it."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((grid, args, kwargs))


def record_launches(workload: str, dtype_name: str, sms: int, pdl: bool) -> list:
    """The conv_block kernel's launches of one network evaluation, on CPU tensors, without
    running any: (block, grid, args, kwargs, finish) with finish the block's ``_conv_block_finish_kernel``
    launch (grid, args, kwargs) where it has one (DP_FAST_WIDE_FINISH=kernel), else None."""
    w = WORKLOADS[workload]
    policy = w.build_policy(torch.device("cpu"), torch.float32)
    policy.precision = dtype_name
    sampler = _fastpath.FastSampler(policy, tcb.conv_block)
    obs, noise = w.inputs(policy)
    acts = sampler._activations(noise)
    table = _fastpath.hoist(sampler.program, torch.tensor([10]), policy._condition(obs))[0]
    coefs = torch.zeros(8, dtype=torch.float64)
    launch, finishes = _Launch(), _Launch()
    saved = tcb._conv_block_kernel, tcb._im2col_kernel, tcb._conv_block_finish_kernel, tcb.sm_count, tcb.dependent_launch
    tcb._conv_block_kernel, tcb.sm_count, tcb.dependent_launch = launch, (lambda device: sms), (lambda device: pdl)
    tcb._im2col_kernel = _Launch()  # DP_FAST_WIDE_IM2COL=1's extra launches: not in the table
    tcb._conv_block_finish_kernel = finishes
    paired = []  # each block's finish launch, or None

    def conv_block(*a, **k):
        before = len(finishes.calls)
        out = sampler.conv_block(*a, **k)
        paired.append(finishes.calls[-1] if len(finishes.calls) > before else None)
        return out

    try:
        _fastpath.run_blocks(sampler.program, conv_block, acts, table, StepArgs(acts["x"], None, coefs))
    finally:
        tcb._conv_block_kernel, tcb._im2col_kernel, tcb._conv_block_finish_kernel, tcb.sm_count, tcb.dependent_launch = saved
    return [(blk, *call, fin) for blk, call, fin in zip(sampler.program.blocks, launch.calls, paired)]


def compile_launch(args, kwargs, arch: int, kernel=None):
    """The launch's kernel (the conv_block kernel unless `kernel` says) compiled for sm_<arch>:
    (resource report, SASS text)."""
    kernel = kernel or tcb._conv_block_kernel
    backend = make_backend(GPUTarget("cuda", arch, 32))
    bound, specialization, options = create_function_from_signature(kernel.signature, kernel.params, backend)(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=options.__dict__)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([os.path.join(BIN, "cuobjdump"), "--dump-sass", f.name], capture_output=True, text=True, check=True).stdout
    fields = {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", usage)}
    fields["SMEM"] = compiled.metadata.shared  # Triton's shared memory is dynamic: not in the cubin's report
    return fields, sass


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, opcode with its modifiers) of every instruction of a SASS listing, in order."""
    return [(int(m.group(1), 16), m.group(2)) for m in map(_SASS_LINE.match, sass.splitlines()) if m]


def loops(sass: str) -> list[tuple[int, int]]:
    """(first, last) address of every loop: the span of each backward branch."""
    spans = []
    for m in map(_BACK_BRANCH.search, sass.splitlines()):
        if m and int(m.group(2), 16) < int(m.group(1), 16):
            spans.append((int(m.group(2), 16), int(m.group(1), 16)))
    return spans


def main_loop(sass: str) -> tuple[int, int] | None:
    """(first, last) address of the loop (a backward branch's span) with the most _PRODUCTS;
    None where no loop has any."""
    listing = instructions(sass)
    best, span = 0, None
    for lo, hi in loops(sass):
        mults = sum(1 for at, name in listing if lo <= at <= hi and name.split(".")[0] in _PRODUCTS)
        if mults > best:
            best, span = mults, (lo, hi)
    return span


def loop_mix(sass: str) -> dict:
    """Instruction counts of the main loop (``main_loop``); empty where there is none."""
    span = main_loop(sass)
    ops: dict = {}
    if span is None:
        return ops
    for at, name in instructions(sass):
        if span[0] <= at <= span[1]:
            op = name if name.startswith("LDG") else name.split(".")[0]
            ops[op] = ops.get(op, 0) + 1
    return ops


_GLOBAL_MEMORY = re.compile(r"\b(LDG|STG|ATOMG|ATOM|RED|LD|ST)\b")


def dependent_launch_mix(sass: str) -> tuple[int, int]:
    """(L2 prefetches, global memory instructions before the first griddepcontrol.wait) of a
    PDL kernel, whose SASS names them CCTL.E.PF2 and ACQBULK; (prefetches, -1) without a wait."""
    prefetches, early = 0, 0
    for line in sass.splitlines():
        m = _SASS_LINE.match(line)
        if not m:
            continue
        if m.group(2).startswith("CCTL.E.PF2"):
            prefetches += 1
        elif m.group(2) == "ACQBULK":
            return prefetches, early
        elif _GLOBAL_MEMORY.match(m.group(2).split(".")[0]):
            early += 1
    return prefetches, -1


def _counted(sass: str) -> tuple[list[tuple[int, str]], int | None]:
    """``instructions`` without the NOPs, and the address of the first arrival at a region's
    counter (ATOMG.E.ADD), None without one."""
    listing = [(at, name) for at, name in instructions(sass) if name != "NOP"]
    return listing, next((at for at, name in listing if name.startswith("ATOMG.E.ADD")), None)


def after_loop(sass: str) -> int:
    """Instructions a warp of every program issues between the end of its main loop
    (``main_loop``) and its arrival at the region's counter (ATOMG.E.ADD), or the end of the
    kernel where it has none (a program that finishes its own region); loops there (a 1x1
    residual conv's) count once; 0 without a main loop."""
    span = main_loop(sass)
    if span is None:
        return 0
    listing, end = _counted(sass)  # the arrival comes after the main loop
    return sum(1 for at, _ in listing if span[1] < at and (end is None or at < end))


def finishing_tail(sass: str, splits: int, whole: bool = False) -> int:
    """Instructions a warp of a region's finishing program issues: in the conv_block kernel, from
    its arrival (the counter's ATOMG.E.ADD) to its end, 0 without one; in a finish kernel
    (``whole``), all of them. Each loop there (the walk over the reduction's shares) counts
    `splits` times; NOPs do not count."""
    listing, arrival = _counted(sass)
    start = 0 if whole else arrival
    if start is None:
        return 0
    count = sum(1 for at, _ in listing if at >= start)
    for lo, hi in loops(sass):
        if lo >= start:
            count += (splits - 1) * sum(1 for at, _ in listing if lo <= at <= hi)
    return count


def launch_trigger(sass: str) -> str:
    """Where a PDL kernel lets the next launch start (griddepcontrol.launch_dependents: PREEXIT
    in the SASS): "early" before its main loop (``main_loop``), "late" after it; "-" where there
    is no trigger or no main loop to place it against."""
    at = next((a for a, name in instructions(sass) if name == "PREEXIT"), None)
    span = main_loop(sass)
    if at is None or span is None:
        return "-"
    return "early" if at < span[0] else "late" if at > span[1] else "in"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="W2-ddim16", choices=list(WORKLOADS))
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--sms", type=int, default=132, help="multiprocessors the plan splits over (H100: 132)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (H100: 90)")
    parser.add_argument("--pdl", action=argparse.BooleanOptionalAction, default=True,
                        help="as a programmatic dependent launch with the weight prefetch (as on the H100; default on)")
    parser.add_argument("--blocks", default=None, help="comma-separated block numbers (default: all)")
    parser.add_argument("--clock-ghz", type=float, default=1.755, help="SM clock for the issue column (H100 SXM: 1.755)")
    parser.add_argument("--probe", action="store_true", help="the kernels as dp_fast.triton.conv_block.probing() compiles them")
    parser.add_argument("--dump", default=None, help="a folder to write each block's SASS to (block-N.sass)")
    args = parser.parse_args()
    only = None if args.blocks is None else {int(b) for b in args.blocks.split(",")}
    print(f"{args.workload} {args.dtype}: Triton {triton.__version__}, sm_{args.arch}, plans for {args.sms} SMs, PDL {'on' if args.pdl else 'off'},"
          f"{' probed,' if args.probe else ''}"
          f" settings: {knob_settings()}")
    print(f"{'#':>3} {'mode':>4} {'c_in':>5} {'c_out':>5} {'k':>2} {'T':>3} {'prod':>5} {'co':>3} {'cols':>4} {'split':>5} {'programs':>8}"
          f" {'regs':>4} {'spill':>5} {'smem':>6} {'loop':>5} {'lmem':>4} {'lpf':>3} {'cpa':>3} {'instr/w':>7} {'mma':>4} {'lds':>3} {'sts':>3} {'bar':>3} {'MAC/i':>5} {'issue':>6} {'pf':>3} {'early':>5} {'trig':>5} {'post':>5} {'fin':>4} {'tail':>5}")
    trips_at = tcb._conv_block_kernel.arg_names.index("chunks_per_split")
    probe_at = tcb._conv_block_kernel.arg_names.index("probe_ptr")
    issue_total = 0.0
    for i, (blk, grid, kargs, kw, finish) in enumerate(record_launches(args.workload, args.dtype, args.sms, args.pdl)):
        if only is not None and i not in only:
            continue
        if args.probe:  # the rows it writes: int64, one a program
            kargs = (*kargs[:probe_at], torch.empty((1, len(tcb.PROBE_FIELDS)), dtype=torch.int64), *kargs[probe_at + 1:])
            kw = dict(kw, PROBE=tcb._PROBE_GPU)
        usage, sass = compile_launch(kargs, kw, args.arch)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
            with open(os.path.join(args.dump, f"block-{i}.sass"), "w") as f:
                f.write(sass)
        mix = loop_mix(sass)
        prefetches, early = dependent_launch_mix(sass)
        trigger = launch_trigger(sass)
        total = sum(mix.values())
        weights_per_thread = kw["BLOCK_CO"] * kw["BLOCK_R"] / (32 * kw["num_warps"])
        # multiply-adds of one trip of the loop per warp instruction it issues (CUDA-core FFMA: at most 32)
        macs_per_instr = kw["BLOCK_CO"] * kw["BLOCK_R"] * kw["BB"] * kw["T_PAD"] / max(total * kw["num_warps"], 1)
        # us to issue every program's trips of that loop at 4 warp instructions per cycle per SM
        # on every SM: a lower bound of the block's time where the loop is bound by issue
        programs = grid[0] * grid[1] * grid[2]
        issue_us = programs * kargs[trips_at] * total * kw["num_warps"] / (4 * args.sms * args.clock_ghz * 1e3)
        issue_total += issue_us
        # the regions' finish: by the last program of each (fin: regions; tail: its instructions
        # a warp after arriving), or by a finish launch (fin: its programs; tail: one's instructions)
        if finish is None:
            fin = grid[0] // kw["TPG"] * grid[1] if kw["TPG"] * kw["SPLIT"] > 1 else 0
            tail = finishing_tail(sass, kw["SPLIT"])
        else:
            fin = finish[0][0] * finish[0][1] * finish[0][2]
            finish_sass = compile_launch(finish[1], finish[2], args.arch, tcb._conv_block_finish_kernel)[1]
            tail = finishing_tail(finish_sass, kw["SPLIT"], whole=True)
            early += max(dependent_launch_mix(finish_sass)[1], 0)  # the finish launch's too
        c_out, c_in, k = blk.weight.shape
        print(f"{i:>3} {blk.mode:>4} {c_in:>5} {c_out:>5} {k:>2} {kw['T_PAD']:>3} {('gemv3' if kw.get('GEMV3D') else 'gemv') if kw.get('GEMV') else 'dot':>5} {kw['BLOCK_CO']:>3}"
              f" {kw['BB'] * kw['T_PAD']:>4} {kw['SPLIT']:>5} {programs:>8} {usage.get('REG', 0):>4}"
              f" {usage.get('LOCAL', 0) + usage.get('STACK', 0):>5} {usage['SMEM']:>6} {total:>5} {mix.get('LDL', 0) + mix.get('STL', 0):>4} {mix.get('CCTL', 0):>3}"
              f" {sum(v for op, v in mix.items() if op.startswith('LDGSTS')):>3} {total / weights_per_thread:>7.1f}"
              f" {mix.get('HMMA', 0) + mix.get('HGMMA', 0):>4} {mix.get('LDS', 0) + mix.get('LDSM', 0):>3} {mix.get('STS', 0) + mix.get('STSM', 0):>3}"
              f" {mix.get('BAR', 0):>3} {macs_per_instr if total else 0:>5.1f} {issue_us:>6.1f} {prefetches:>3} {early:>5} {trigger:>5} {after_loop(sass):>5} {fin:>4} {tail:>5}")
    print(f"issue: {issue_total:.0f} us summed over the blocks shown (main loops only, {args.clock_ghz} GHz, {args.sms} SMs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
