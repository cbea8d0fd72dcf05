"""Does the order in which the fused blocks read their weights cost bandwidth? At batch 1 a
block's programs each read a tile of rows over a share of the reduction, a chunk at a time: W2's
1024-channel blocks (1024 x 5120 float32 weights, 21 MB) as 256 Triton programs of 32 rows x 64
values, ten chunks each, so every chunk is 32 row segments of 256 bytes (128 in bfloat16) lying
20 KB apart. On the H200 (2026-11-26) those blocks moved 1.7 TB/s of weights from DRAM in the
sampler and 1.3-2 TB/s from L2 alone, where a device copy moves 4.2, and bfloat16 (half the
bytes, as many segments) gained nothing. One reading: the segments, not the bytes, set the rate
(each a DRAM page or an L2 request of its own). This measures it without the rest of a block,
for those blocks' shape and for W2's skip block 18 (512 x 10240 in 16 shares): the same bytes
and the same work per program, and 10.9 µs alone on the H200 against the 1024-channel blocks'
16.5 (their rows lie 40 KB apart).

Each pattern reads the same matrices with the same programs, chunks and loop (Triton's pipeliner
staging STAGES chunks; a sum per program is written, so nothing is dropped); only the addresses
differ:

    tiles    the fused kernels' order: program (i, s) reads rows [ROWS i, ROWS (i + 1)), chunk c
             of its share s of the columns: ROWS segments of CHUNK values, a row apart
    packed   the same values packed tile by tile (``pack``): each program's chunks are one
             contiguous run, ROWS x CHUNK values each, one after another

from DRAM (MATRICES matrices, more bytes than L2 holds, read one launch each in turn, as a
sampler reads its blocks) and from L2 (one matrix read again and again). µs per matrix and GB/s
of weights, beside a device-to-device copy's (read + write). The launches are captured in one
CUDA graph and the graph's replays timed, as the sampler runs its blocks: the first H200 run of
this script (2026-11-27) launched them from Python and measured 15-27 µs per matrix whatever
the order, dtype or source (L2 or DRAM), the host's time it seems, where a 21 MB matrix at
4 TB/s takes the GPU 5 µs. Usage (a CUDA GPU):

    python bench/diag/weight_stream.py [--shapes 1024x5120/8,512x10240/16] [--rows 32 --chunk 64]
                                       [--dtype fp32|bf16|both] [--out stream.json]

If ``packed`` streams much faster than ``tiles``, the fused kernels should read their weights
packed once in tile order when the sampler is built (and again when the weights change).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from dp_fast.benchmark import capture_graph, measure_bandwidth, time_calls  # noqa: E402

PATTERNS = ("tiles", "packed")
SHAPES = [(1024, 5120, 8), (512, 10240, 16)]  # (C_out, R, splits): W2's blocks 12-17 and 18
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@triton.jit
def _stream(w_ptr, out_ptr, R, n_chunks, PACKED: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr,
            STAGES: tl.constexpr):
    i = tl.program_id(0)
    s = tl.program_id(1)
    splits = tl.num_programs(1)
    row = tl.arange(0, ROWS)
    col = tl.arange(0, CHUNK)
    acc = tl.zeros((ROWS, CHUNK), dtype=tl.float32)
    for c in tl.range(0, n_chunks, num_stages=STAGES):
        if PACKED:  # program (i, s)'s chunk c: ROWS x CHUNK values in a row
            offs = ((i * splits + s) * n_chunks + c).to(tl.int64) * (ROWS * CHUNK) + row[:, None] * CHUNK + col[None, :]
        else:  # rows ROWS i .. of the (C_out, R) matrix, columns (s n_chunks + c) CHUNK ..
            offs = (i * ROWS + row[:, None]).to(tl.int64) * R + (s * n_chunks + c) * CHUNK + col[None, :]
        acc += tl.load(w_ptr + offs).to(tl.float32)
    tl.store(out_ptr + i * splits + s, tl.sum(acc))


def pack(w: torch.Tensor, rows: int, chunk: int, splits: int) -> torch.Tensor:
    """w (C_out, R) in the order ``packed`` reads it: tile i, share s, chunk c, then ROWS x CHUNK."""
    c_out, r = w.shape
    n_chunks = r // (splits * chunk)
    return w.reshape(c_out // rows, rows, splits, n_chunks, chunk).permute(0, 2, 3, 1, 4).contiguous().reshape(-1)


def stream(src: torch.Tensor, shape: tuple[int, int], pattern: str, rows: int, chunk: int, splits: int,
           out: torch.Tensor | None = None, stages: int = 4) -> torch.Tensor:
    """Every program's sum of the weights it reads of a (C_out, R) = ``shape`` matrix, read as
    ``pattern`` says from ``src``: the matrix itself (``tiles``) or ``pack(matrix, rows, chunk,
    splits)`` (``packed``); (C_out / rows, splits) float32 sums, the same for both."""
    c_out, r = shape
    if pattern not in PATTERNS:
        raise ValueError(f"stream: pattern must be one of {PATTERNS}, got {pattern!r}")
    if c_out % rows or r % (splits * chunk):
        raise ValueError(f"stream: a ({c_out}, {r}) matrix does not split into tiles of {rows} rows and {splits} x {chunk} columns")
    if src.numel() != c_out * r or not src.is_contiguous():
        raise ValueError(f"stream: src must be a contiguous tensor of {c_out} x {r} values, got {tuple(src.shape)}")
    out = torch.empty(c_out // rows, splits, dtype=torch.float32, device=src.device) if out is None else out
    _stream[(c_out // rows, splits)](src, out, r, r // (splits * chunk), PACKED=pattern == "packed", ROWS=rows, CHUNK=chunk,
                                     STAGES=stages)
    return out


def _time_us(fn, repeats: int) -> float:
    """Median µs of a replay of fn()'s launches captured in one CUDA graph, over `repeats`
    replays after one warm-up (the benchmark's timer)."""
    graph, _ = capture_graph(fn, warmup=1)
    times_ms, _ = time_calls(graph.replay, torch.device("cuda"), warmup=1, repeats=repeats, max_seconds=math.inf)
    return statistics.median(times_ms) * 1e3


def measure(dtype: torch.dtype, shape: tuple[int, int], rows: int, chunk: int, splits: int, matrices: int,
            repeats: int, stages: int) -> list[dict]:
    """Rows of the table for one dtype: each pattern from DRAM (`matrices` matrices in turn) and
    from L2 (one matrix, `matrices` times), µs per matrix and GB/s of weights."""
    device = torch.device("cuda")
    weights = [torch.randn(shape, device=device).to(dtype) for _ in range(matrices)]
    sources = {"tiles": weights, "packed": [pack(w, rows, chunk, splits) for w in weights]}
    out = torch.empty(shape[0] // rows, splits, dtype=torch.float32, device=device)
    expected = stream(weights[0], shape, "tiles", rows, chunk, splits, stages=stages).clone()
    nbytes = weights[0].numel() * weights[0].element_size()
    table = []
    for pattern in PATTERNS:
        got = stream(sources[pattern][0], shape, pattern, rows, chunk, splits, stages=stages)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-2):  # the same values, summed in another order
            raise RuntimeError(f"{pattern}: the programs' sums differ from the tiles' ({(got - expected).abs().max().item()})")
        for where, srcs in (("DRAM", sources[pattern]), ("L2", sources[pattern][:1] * matrices)):
            us = _time_us(lambda: [stream(s, shape, pattern, rows, chunk, splits, out, stages) for s in srcs], repeats) / matrices
            table.append(dict(dtype=str(dtype).replace("torch.", ""), pattern=pattern, source=where, us_per_matrix=round(us, 2),
                              gb_per_s=round(nbytes / us / 1e3, 1)))
    return table


def _shape(text: str) -> tuple[int, int, int]:
    """'C_OUTxR/SPLITS' as (C_out, R, splits)."""
    try:
        size, splits = text.split("/")
        c_out, r = size.split("x")
        return int(c_out), int(r), int(splits)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is C_OUTxR/SPLITS (e.g. 1024x5120/8), got {text!r}") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=lambda t: [_shape(s) for s in t.split(",")], default=SHAPES,
                        help="matrices (C_out x R) and shares of the reduction, C_OUTxR/SPLITS,...: by default W2's "
                             "1024-channel blocks (12-17: 1024x5120 in 8 shares, 16.5 us each alone on the H200) and its "
                             "skip block 18 (512x10240 in 16 shares: the same 21 MB, the same programs' work, 10.9 us)")
    parser.add_argument("--rows", type=int, default=32, help="rows per program (Triton's GEMV tiles at T=4: 32)")
    parser.add_argument("--chunk", type=int, default=64, help="values per row and chunk (Triton's GEMV chunks: 64)")
    parser.add_argument("--matrices", type=int, default=12, help="matrices read in turn: more bytes than L2 holds")
    parser.add_argument("--stages", type=int, default=4, help="chunks Triton's pipeliner keeps in flight")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--out", default=None, help="JSON path")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("weight_stream: needs a CUDA GPU", file=sys.stderr)
        return 2
    report = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                  copy_gb_per_s=round(measure_bandwidth(torch.device("cuda")) / 1e9, 1), rows=[],
                  plan=dict(rows=args.rows, chunk=args.chunk, matrices=args.matrices, stages=args.stages))
    print(f"{report['device']}, torch {report['torch']}, Triton {report['triton']}: device copy {report['copy_gb_per_s']} GB/s "
          f"(read + write); programs of {args.rows} rows x {args.chunk} values a chunk, launches in one CUDA graph")
    print(f"{'shape':13} {'programs':>8} {'dtype':9} {'pattern':7} {'source':6} {'us':>8} {'GB/s':>8}")
    for c_out, r, splits in args.shapes:
        for name in (["fp32", "bf16"] if args.dtype == "both" else [args.dtype]):
            for row in measure(DTYPES[name], (c_out, r), args.rows, args.chunk, splits, args.matrices, args.repeats, args.stages):
                row = dict(c_out=c_out, r=r, splits=splits, **row)
                report["rows"].append(row)
                print(f"{f'{c_out}x{r}/{splits}':13} {c_out // args.rows * splits:8} {row['dtype']:9} {row['pattern']:7} "
                      f"{row['source']:6} {row['us_per_matrix']:8.2f} {row['gb_per_s']:8.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
