"""Does `prefetch.global.L1` bring a line into L1 on this GPU, and does an acquire (the grid
barrier's `ld.acquire.gpu`) throw away what L1 holds? Both CUDA-backend paths lean on the
answers (kernels/conv_block.cu): the staged chain entries and the epilogues ask L1 for their
weights and operands with `prefetch_l1` and then load them, expecting L1's latency; a chain's
grid barrier acquires, so what a CTA cached before it is assumed lost (its prefetches are issued
after it). Nothing documents either for Hopper, so we measure them.

One warp chases pointers through LINES lines of 128 bytes (a random cycle, each line read once,
each load's address the previous load's value), timed with %clock64; cycles per load, after
each way of preparing the lines:

    l2            no preparation, loads through L2 only (ld.global.cg): L2's latency
    miss          no preparation, plain ld.global (cached in L1, as the kernels' loads): a miss
    hit           the lines loaded (ld.global) first: L1's latency
    prefetch      prefetch.global.L1 of every line first
    hit-acquire   loaded first, then an ld.acquire.gpu: does the acquire empty L1?
    nc-acquire    loaded through the read-only path (ld.global.nc) first, then an acquire, then
                  chased through it: do read-only lines survive an acquire?

Every preparation is followed by a wait of WAIT_CYCLES (from when its loads have arrived), so
that prefetches have landed before the chase starts; each launch reads lines of its own
(nothing it finds in L1 was put there by another). Usage (a CUDA GPU; on the CPU,
--compile-only compiles the kernel for sm_90 and prints what its SASS holds of each mode's
instructions):

    python bench/diag/l1_prefetch.py [--lines 32] [--repeats 5] [--out l1.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

MODES = ("l2", "miss", "hit", "prefetch", "hit-acquire", "nc-acquire")
LINE_INTS = 32  # 128-byte lines of int32
WAIT_CYCLES = 50000  # after the preparation, before the chase: ~25-30 us at 1.7-2 GHz


@triton.jit
def _asm_load(ptr, KIND: tl.constexpr):
    if KIND == 0:  # through L2 only
        return tl.inline_asm_elementwise("ld.global.cg.u32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32, is_pure=False, pack=1)
    elif KIND == 1:  # cached in L1
        return tl.inline_asm_elementwise("ld.global.u32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32, is_pure=False, pack=1)
    else:  # the read-only (non-coherent) path
        return tl.inline_asm_elementwise("ld.global.nc.u32 $0, [$1];", "=r,l", [ptr], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _clock(dep, scratch_ptr):
    # %clock64 once `dep` has arrived: a volatile store of it (which must wait for it, and which
    # the compiler cannot drop or move past the clock's read) comes first.
    return tl.inline_asm_elementwise(
        "{ .reg .u32 t; add.u32 t, $1, 1; st.volatile.global.u32 [$2], t; mov.u64 $0, %clock64; }", "=l,r,l",
        [dep, scratch_ptr], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _chase_kernel(buf_ptr, flag_ptr, out_ptr, LINES: tl.constexpr, MODE: tl.constexpr, WAIT: tl.constexpr):
    # MODE: an index into MODES. Every lane of the one warp chases the same lines. flag_ptr[0]
    # holds 0: the chase starts at the offset read from it (through L2, or by the acquire), so
    # nothing the compiler can see makes the chase's loads the preparation's.
    lane = tl.arange(0, 32)
    zero = lane * 0
    sink = zero
    # Preparation: the lines [0, LINES) of this mode's region.
    if MODE == 2 or MODE == 4:  # hit, hit-acquire: load them through L1
        for i in tl.static_range(LINES):
            sink += _asm_load(buf_ptr + i * 32 + zero, 1)  # 32: LINE_INTS
    if MODE == 5:  # nc-acquire: through the read-only path
        for i in tl.static_range(LINES):
            sink += _asm_load(buf_ptr + i * 32 + zero, 2)
    if MODE == 3:  # prefetch
        for i in tl.static_range(LINES):
            sink += tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [buf_ptr + i * 32 + zero],
                                              dtype=tl.int32, is_pure=False, pack=1)
    # Let them land: WAIT cycles from when every preparation load has arrived (the clock's
    # store waits for `sink`, so the loads cannot move past it).
    scratch = out_ptr + 2 + zero
    ready = _clock(sink, scratch)
    now = ready
    while tl.max(now - ready, axis=0) < WAIT:
        now = _clock(zero, scratch)
    if MODE == 4 or MODE == 5:  # the grid barrier's acquire
        off = tl.inline_asm_elementwise("ld.acquire.gpu.u32 $0, [$1];", "=r,l", [flag_ptr + zero], dtype=tl.int32,
                                        is_pure=False, pack=1)
    else:
        off = _asm_load(flag_ptr + zero, 0)
    # The chase: line 0 holds the offset (in ints) of the next line, and so on around the cycle.
    KIND: tl.constexpr = 0 if MODE == 0 else 2 if MODE == 5 else 1
    t0 = _clock(off, scratch)
    for _ in tl.static_range(LINES):
        off = _asm_load(buf_ptr + off, KIND)
    t1 = _clock(off, scratch)
    tl.store(out_ptr + lane, t1 - t0, mask=lane == 0)
    tl.store(out_ptr + 1 + lane, off + sink, mask=lane == 0)  # keeps the chase and the preparation live


def chase_buffer(lines: int, regions: int, generator: torch.Generator) -> torch.Tensor:
    """regions x lines lines of LINE_INTS int32; in each region, line i's first int is the
    offset (in ints, from the region's start) of the next line of a random cycle through all of
    them, starting at line 0."""
    buf = torch.zeros(regions, lines, LINE_INTS, dtype=torch.int32)
    for r in range(regions):
        order = [0] + (torch.randperm(lines - 1, generator=generator) + 1).tolist()
        for a, b in zip(order, order[1:] + order[:1]):
            buf[r, a, 0] = b * LINE_INTS
    return buf


def follow(region: torch.Tensor) -> list[int]:
    """The lines a chase through `region` (lines x LINE_INTS) visits, in order, from line 0."""
    seen, at = [], 0
    for _ in range(region.shape[0]):
        at = int(region[at // LINE_INTS, 0])
        seen.append(at // LINE_INTS)
    return seen


def measure(lines: int, repeats: int) -> dict:
    """Cycles per load for every mode: the median over `repeats` launches, each on lines no
    earlier launch touched."""
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    regions = len(MODES) * repeats
    buf = chase_buffer(lines, regions, g).to(device)
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    out = torch.zeros(3, dtype=torch.int64, device=device)  # cycles, the chase's end, the clocks' scratch
    buf.sum()  # every line in L2
    torch.cuda.synchronize()
    result = {}
    for m, mode in enumerate(MODES):
        cycles = []
        for rep in range(repeats):
            region = buf[m * repeats + rep]
            _chase_kernel[(1,)](region, flag, out, LINES=lines, MODE=m, WAIT=WAIT_CYCLES, num_warps=1)
            torch.cuda.synchronize()
            cycles.append(int(out[0]) / lines)
        result[mode] = sorted(cycles)[len(cycles) // 2]
    return result


def verdict(c: dict) -> list[str]:
    """What the cycles say, in words."""
    def near(x, a, b):  # x closer to a than to b
        return abs(x - a) < abs(x - b)

    hit, miss = c["hit"], c["miss"]
    return [
        f"prefetch.global.L1 {'brings lines into L1' if near(c['prefetch'], hit, miss) else 'does not bring lines into L1'}"
        f" ({c['prefetch']:.0f} cycles a load: L1 hit {hit:.0f}, miss {miss:.0f})",
        f"an acquire {'empties L1' if near(c['hit-acquire'], miss, hit) else 'leaves L1 as it was'} "
        f"({c['hit-acquire']:.0f} cycles after it)",
        f"read-only (ld.global.nc) lines {'survive' if near(c['nc-acquire'], hit, miss) else 'do not survive'} an acquire "
        f"({c['nc-acquire']:.0f} cycles)",
    ]


def compile_only(lines: int, arch: int) -> dict:
    """Every mode's kernel compiled for sm_<arch> on this machine (no GPU): per mode, the SASS
    instructions that carry it (CCTL.E.PF1: the L1 prefetch; LD.E.STRONG.GPU and CCTL.IVALL: the
    acquire; LDG.E.STRONG.GPU: ld.global.cg; LDG.E.CONSTANT: ld.global.nc; CS2R: the clocks),
    the loads and prefetches placed before the wait ("before_wait": the preparation's, none of
    the chase's) and whether the acquire comes after the wait's loop ("acquire_after_wait"): the
    compiler must not move the preparation past the acquire, nor the acquire before the wait."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import triton_sass  # noqa: E402  (the compile path for a GPU we do not have)

    counts = {}
    for m, mode in enumerate(MODES):
        buf = chase_buffer(lines, 1, torch.Generator().manual_seed(0))[0]
        _, sass = triton_sass.compile_launch(
            (buf, torch.zeros(1, dtype=torch.int32), torch.zeros(3, dtype=torch.int64)),
            {"LINES": lines, "MODE": m, "WAIT": WAIT_CYCLES, "num_warps": 1}, arch, kernel=_chase_kernel)
        ops = triton_sass.instructions(sass)
        c = {k: sum(1 for _, o in ops if o.startswith(k))
             for k in ("CCTL.E.PF1", "LD.E.STRONG.GPU", "CCTL.IVALL", "LDG.E.STRONG.GPU", "LDG.E.CONSTANT", "CS2R")}
        first_clock = next(a for a, o in ops if o == "CS2R")
        c["before_wait"] = sum(1 for a, o in ops if a < first_clock and o.startswith(("LDG", "CCTL.E.PF1")))
        loop_end = max((hi for _, hi in triton_sass.loops(sass)), default=-1)
        c["acquire_after_wait"] = int(any(o == "LD.E.STRONG.GPU" and a > loop_end >= 0 for a, o in ops))
        counts[mode] = c
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=32, help="lines a chase reads (each once)")
    parser.add_argument("--repeats", type=int, default=5, help="launches per mode (the median is reported)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--compile-only", action="store_true", help="compile for --arch and count instructions (no GPU)")
    parser.add_argument("--arch", type=int, default=90)
    args = parser.parse_args()
    if args.lines < 2:
        parser.error("--lines must be at least 2")
    if args.compile_only:
        counts = compile_only(args.lines, args.arch)
        for mode, c in counts.items():
            print(f"{mode:12s} " + " ".join(f"{k} {v}" for k, v in c.items()))
        return 0
    if not torch.cuda.is_available():
        print("l1_prefetch: needs a CUDA GPU (or --compile-only)", file=sys.stderr)
        return 2
    cycles = measure(args.lines, args.repeats)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}: cycles per load, "
          f"{args.lines} lines, median of {args.repeats}")
    for mode in MODES:
        print(f"  {mode:12s} {cycles[mode]:7.1f}")
    lines = verdict(cycles)
    for line in lines:
        print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                       "lines": args.lines, "repeats": args.repeats, "cycles_per_load": cycles, "verdict": lines}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
