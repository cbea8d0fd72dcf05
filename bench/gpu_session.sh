#!/usr/bin/env bash
# One call on a lent GPU machine: build the extension in place, run the GPU tests, time every
# block, run the benchmark. Logs and JSON go to $OUT (or ./out; at most 8 files come back from
# a lent machine, so per-run logs stay in /tmp). Usage:
#   bash bench/gpu_session.sh [tests|blocks|bench|timeline|probe|sanitize|ncu|stream|l1|host|diag ...]   (default: tests blocks bench)
# ncu: Nsight Compute on the blocks NCU_BLOCKS of NCU_WORKLOAD (default W2-ddim16, blocks 12: a
# 1024-channel block at T=4, and 18: the skip concatenation; W4's block 12 is its batch-64 twin)
# for each backend in BACKENDS, shared-memory bank conflicts included, at the clocks the machine
# runs (--clock-control none: ncu would otherwise lock them at base, which the lent machines' rules
# forbid, and the benchmark runs unlocked); diag: the scheduler_step
# crash hunt. DEADLINE_S: seconds the whole call may take (default 540: a lent machine runs a
# command for at most 600 s); every step but the build is cut at what is left of it, so a lease
# ends with each step's output so far rather than with a killed call; BENCH_ARGS go to
# bench/run.py. PREBUILT (default prebuilt/, made by bench/prebuild.sh and carried by the call):
# an extension built ahead, used instead of the build where its stamp matches, and Triton's
# kernels compiled ahead (triton-cache.tgz), unpacked into TRITON_CACHE_DIR.
set -uo pipefail
start=${GPU_SESSION_START:-$(date +%s)}  # set it to share one deadline across several calls of this script
left() { local l=$(( ${DEADLINE_S:-540} - ($(date +%s) - start) )); [ "$l" -lt "$1" ] && echo $(( l > 5 ? l : 5 )) || echo "$1"; }
cd "$(dirname "$0")/.."
OUT="${OUT:-out}"; mkdir -p "$OUT" ${JSON_DIR:+"$JSON_DIR"}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS=16
PY=${PY:-python3}
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(tests blocks bench)
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; $PY -c "import torch, triton; print(torch.__version__, triton.__version__)"; } 2>&1 | tee -a "$OUT/env.txt"
t0=$(date +%s)
# The extension: prebuilt on the development machine (bench/prebuild.sh; the call carries PREBUILT)
# where its stamp matches this checkout, torch and Python and it loads here with its CUDA kernels,
# else built here (about 145 s; the build writes over a prebuilt one that did not load)
PREBUILT=${PREBUILT:-prebuilt}
if [ -z "${SKIP_BUILD:-}" ] && ! { [ -f "$PREBUILT/stamp.json" ] && $PY bench/prebuilt.py use --dir "$PREBUILT" &&
                                 $PY -c "import dp_fast._ext as e; assert e.cuda_compiled(), 'the prebuilt extension does not load'"; }; then
  $PY setup.py build_ext --inplace >/tmp/build.log 2>&1 || { tail -50 /tmp/build.log; exit 1; }
fi
echo "build: $(( $(date +%s) - t0 )) s"
# Triton's kernels compiled ahead, unpacked once into the folder they were compiled in (its entries
# name their files by path: bench/precompile.py's CACHE_DIR); what a command compiles itself is
# counted at its end
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/dp-fast-triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
if [ -f "$PREBUILT/triton-cache.tgz" ] && [ ! -e "$TRITON_CACHE_DIR/.unpacked" ]; then
  tar xzf "$PREBUILT/triton-cache.tgz" -C "$TRITON_CACHE_DIR" && touch "$TRITON_CACHE_DIR/.unpacked"
fi
kernels() { find "$TRITON_CACHE_DIR" -mindepth 1 -maxdepth 1 -type d | wc -l; }
cached=$(kernels)
$PY -m dp_fast info >>"$OUT/env.txt" 2>&1 || echo "dp-fast info failed: see $OUT/env.txt"  # the extension's code for this GPU, auto's choice
for s in "${steps[@]}"; do
  t0=$(date +%s)
  case "$s" in
    # -v: every test's outcome is logged by name as it ends, so a timeout or a crashed worker
    # still leaves the names of the failures; -rf adds their messages when pytest finishes.
    # TESTS: the files that touch the GPU by default (the rest is CPU-only, CI's); a test past
    # TEST_LIMIT seconds ends its worker (pytest-timeout, on the lent machines) and says so in the log.
    tests) timeout $(left ${TEST_TIMEOUT:-300}) $PY -m pytest -v -rf --tb=short -n ${TEST_WORKERS:-16} -p no:cacheprovider \
             --timeout ${TEST_LIMIT:-240} -o timeout_method=thread ${TEST_ARGS:-} \
             ${TESTS:-tests/test_conv_block.py tests/test_fast_backends.py tests/test_scheduler_step.py tests/test_policy.py tests/test_cli.py tests/test_benchmark.py} >"$OUT/tests.log" 2>&1
           grep -E "FAILED|ERROR|crashed|passed|failed" "$OUT/tests.log" | cut -c1-300 | tail -40 ;;
    # GEMV_LIST: DP_FAST_GEMV_MAX_COLUMNS per run (16: the default, the CUDA kernel's 8; 0: the
    # tiled reduction for every tile, tl.dot in Triton), for an A/B of the two reductions in one
    # call. PDL_LIST:
    # DP_FAST_PDL per run (1: programmatic dependent launch with the weight prefetch, the
    # default; 0: plain launches), here and in bench. AHEAD_LIST: DP_FAST_LOOP_PREFETCH_CHUNKS
    # per run (Triton's L2 prefetch of the weights chunks ahead; 0: none, the default; 4: four).
    # BLOCK_ENVS: as bench's BENCH_ENVS (below), one blocks table per setting.
    blocks) for envs in ${BLOCK_ENVS:--}; do for ahead in ${AHEAD_LIST:-0}; do for pdl in ${PDL_LIST:-1}; do for gemv in ${GEMV_LIST:-16}; do for pps in ${PPS_LIST:-2}; do for b in ${BACKENDS:-triton}; do for w in ${BLOCK_WORKLOADS:-W1 W2-ddim16}; do for d in ${DTYPES:-fp32}; do
              settings=(); [ "$envs" = "-" ] || IFS=, read -ra settings <<<"$envs"
              echo "programs per SM: $pps, gemv max columns: $gemv, pdl: $pdl, chunks ahead: $ahead, settings: $envs" >>"$OUT/blocks.log"
              env "${settings[@]}" DP_FAST_LOOP_PREFETCH_CHUNKS=$ahead DP_FAST_PDL=$pdl DP_FAST_GEMV_MAX_COLUMNS=$gemv DP_FAST_PROGRAMS_PER_SM=$pps timeout $(left 120) $PY bench/blocks.py --workload "$w" --backend "$b" --dtype "$d" --out "${JSON_DIR:-/tmp}/blocks-$w-$b-$d-ahead$ahead-pdl$pdl-gemv$gemv-pps$pps${envs//[^A-Za-z0-9]/_}.json" >>"$OUT/blocks.log" 2>&1
              echo "$b $w $d pps=$pps gemv=$gemv pdl=$pdl ahead=$ahead $envs: $(tail -1 "$OUT/blocks.log")"; done; done; done; done; done; done; done; done ;;
    # METHODS: add cuda-chain to time the CUDA backend with the whole loop as one chain launch.
    # BENCH_ENVS: space-separated settings, one run each, for A/B runs in one call; a setting is
    # VAR=value[,VAR=value...] (e.g. "DP_FAST_GEMV_DEPTH=1 DP_FAST_GEMV_DEPTH=2"), "-" for none.
    bench) for envs in ${BENCH_ENVS:--}; do for pdl in ${PDL_LIST:-1}; do
             settings=(); [ "$envs" = "-" ] || IFS=, read -ra settings <<<"$envs"
             echo "== $envs pdl=$pdl" >>"$OUT/bench.log"
             env "${settings[@]}" DP_FAST_PDL=$pdl timeout $(left ${BENCH_TIMEOUT:-300}) $PY bench/run.py ${BENCH_ARGS:-} --workloads "${WORKLOADS:-W1,W2-ddim16,W3,W4}" --methods "${METHODS:-reference+graph,triton}" \
               --dtype "${DTYPE:-fp32}" --out "${JSON_DIR:-$OUT}/bench-${DTYPE:-fp32}-pdl$pdl${TAG:-}${envs//[^A-Za-z0-9]/_}.json" 2>&1 | tee -a "$OUT/bench.log" | grep -v "^  W" | tail -${BENCH_LINES:-16}
           done; done ;;
    sanitize) for tool in ${SAN_TOOLS:-memcheck racecheck}; do
                timeout $(left ${SAN_TIMEOUT:-600}) compute-sanitizer --tool $tool --error-exitcode 9 $PY -m pytest -q -x -p no:cacheprovider ${SAN_TESTS:-tests/test_conv_block.py} ${SAN_K:+-k "$SAN_K"} \
                  >"$OUT/sanitize-$tool.log" 2>&1; echo "$tool rc=$?"; tail -5 "$OUT/sanitize-$tool.log"; done ;;
    ncu) for b in ${BACKENDS:-triton}; do for blk in ${NCU_BLOCKS:-12 18}; do
           timeout $(left 300) ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section WarpStateStats --section SchedulerStats \
             --section Occupancy --section LaunchStats --section SourceCounters -k regex:conv_block_kernel --launch-skip 1 --launch-count 1 -f -o "/tmp/ncu-$b-$blk" \
             $PY bench/blocks.py --workload "${NCU_WORKLOAD:-W2-ddim16}" --backend "$b" --blocks "$blk" >"/tmp/ncu-$b-$blk.log" 2>&1
           echo "## $b ${NCU_WORKLOAD:-W2-ddim16} block $blk" >>"$OUT/ncu.txt"; tail -3 "/tmp/ncu-$b-$blk.log" >>"$OUT/ncu.txt"
           # the sections' pages, then every stall metric they collected (the warp-state breakdown
           # behind their charts, which the details page does not print)
           ncu --import "/tmp/ncu-$b-$blk.ncu-rep" --page details 2>&1 | grep -vE "^==PROF==|^\s*$" | cut -c1-160 >>"$OUT/ncu.txt"
           ncu --import "/tmp/ncu-$b-$blk.ncu-rep" --page raw 2>&1 | grep -E "stall|inst_executed|warps_active" | cut -c1-160 >>"$OUT/ncu.txt"
           # each SASS instruction's executions and sampled stalls (SourceCounters), to the JSON
           # archive: which instructions of the loop the warps wait at
           ncu --import "/tmp/ncu-$b-$blk.ncu-rep" --csv --print-source sass --page source >"${JSON_DIR:-/tmp}/ncu-source-$b-$blk.csv" 2>&1
         done; done
         grep -E "##|Duration|DRAM Throughput|Achieved Occupancy|Issue Slots Busy|Registers Per|Stall|Bank" "$OUT/ncu.txt" | head -60 ;;
    # timeline: one sample() per (method, workload) profiled kernel by kernel in the sampler's
    # own graph (bench/diag/timeline.py): per block its kernel time and start-to-start interval
    # (TAG names the JSON, e.g. for a second run under DP_FAST_PDL=0).
    timeline) echo "== timeline${TAG:-} DP_FAST_PDL=${DP_FAST_PDL:-}" >>"$OUT/timeline.txt"
              for m in ${TIMELINE_METHODS:-triton cuda-blocks}; do for w in ${TIMELINE_WORKLOADS:-W1 W2-ddim16}; do for d in ${DTYPES:-fp32}; do
                timeout $(left 120) $PY bench/diag/timeline.py --workload "$w" --method "$m" --dtype "$d" \
                  --out "${JSON_DIR:-/tmp}/timeline-$w-$m-$d${TAG:-}.json" >>"$OUT/timeline.txt" 2>&1
                echo "$m $w $d: $(grep -E "per evaluation|chain kernel" "$OUT/timeline.txt" | tail -1)"; done; done; done ;;
    # probe: each block of Triton's sampler graph split into its handoff from the block before,
    # its programs' work up to the last arrival and the last program's tail
    # (bench/diag/probe.py; PROBE_WORKLOADS, DTYPES, PROBE_METHOD: triton or cuda-chain, the CUDA
    # loop as one launch, per entry its CTAs' work and grid barrier; TAG names the JSON)
    probe) m=${PROBE_METHOD:-triton}; echo "== probe $m${TAG:-} $(env | grep '^DP_FAST_' | sort | tr '\n' ' ')" >>"$OUT/probe.txt"
           for w in ${PROBE_WORKLOADS:-W2-ddim16 W1}; do for d in ${DTYPES:-fp32}; do
             timeout $(left 120) $PY bench/diag/probe.py --workload "$w" --method "$m" --dtype "$d" \
               --out "${JSON_DIR:-/tmp}/probe-$w-$m-$d${TAG:-}.json" >>"$OUT/probe.txt" 2>&1
             echo "probe $m $w $d: $(grep -E "^per evaluation|Error|error" "$OUT/probe.txt" | tail -1)"; done; done ;;
    # stream: does the order in which the fused kernels read their weights cost bandwidth
    # (bench/diag/weight_stream.py: tile rows against the same tiles packed contiguously)?
    stream) timeout $(left 90) $PY bench/diag/weight_stream.py --out "${JSON_DIR:-/tmp}/stream.json" 2>&1 | tee "$OUT/stream.txt" ;;
    # l1: does prefetch.global.L1 land in L1, and does an acquire empty it (bench/diag/l1_prefetch.py)?
    l1) timeout $(left 90) $PY bench/diag/l1_prefetch.py --out "${JSON_DIR:-/tmp}/l1.json" 2>&1 | tee "$OUT/l1.txt" ;;
    # host: the host's part of one sample() on the GPU, its loop stubbed out (bench/diag/host.py:
    # the check's, the copies' and an empty graph's launches, the verdict's wait)
    host) for b in ${BACKENDS:-triton cuda}; do
            timeout $(left 60) $PY bench/diag/host.py --device cuda --backend "$b" --json "${JSON_DIR:-/tmp}/host-$b.json" 2>&1 | tee -a "$OUT/host.txt"; done ;;
    diag) for d in ${DIAG_DEVICES:-cpu cuda}; do timeout $(left 120) $PY bench/diag/scheduler_step_bad_inputs.py $d 2>&1 | tee -a "$OUT/diag.txt"; done ;;
  esac
  echo "== $s: $(( $(date +%s) - t0 )) s"
done
echo "Triton kernels: $cached in the cache at the start, $(( $(kernels) - cached )) compiled by this command" | tee -a "$OUT/env.txt"
# JSON_DIR (a folder outside $OUT, since at most 8 files come back from a lent machine): its
# files travel back as one archive
[ -n "${JSON_DIR:-}" ] && tar czf "$OUT/json.tgz" -C "$JSON_DIR" . 2>/dev/null
exit 0
