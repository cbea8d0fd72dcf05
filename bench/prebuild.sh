#!/usr/bin/env bash
# Builds dp_fast._C here for a lent GPU machine, ahead of its lease, into prebuilt/ with a stamp
# (bench/prebuilt.py), and compiles the Triton kernels the prepared call runs into
# prebuilt/triton-cache.tgz (bench/precompile.py): the build then costs the lease nothing (about
# 145 s of 15 minutes on it), and the kernels found in the cache there neither.
# The lent machine has torch 2.11.0+cu130 on Python 3.12 (device tool's KINDS.md); PyPI's
# torch==2.11.0 wheel is that build. Usage, then name prebuilt in run's carry:
#   bash bench/prebuild.sh        # DEVICE_TORCH (2.11.0), DEVICE_PYTHON (python3.12),
#                                 # TORCH_CUDA_ARCH_LIST (9.0), PREBUILD_VENV, MAX_JOBS (2)
# About 9 minutes on a 2-core machine (the build 3.5, the kernels 5), the first time 2.5 GB of
# wheels more. The stamp holds a
# digest of the build inputs: a change to setup.py, csrc/ or kernels/ after this makes
# bench/gpu_session.sh build on the lent machine again, as it did before.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${DEVICE_PYTHON:-$(command -v python3.12 || ls /root/.pyenv/versions/3.12.*/bin/python3.12 2>/dev/null | tail -1)}
[ -x "$PYTHON" ] || { echo "no Python 3.12 found: set DEVICE_PYTHON" >&2; exit 1; }
VENV=${PREBUILD_VENV:-/tmp/dp-prebuild-venv}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} DP_FAST_REQUIRE_CUDA=1 MAX_JOBS=${MAX_JOBS:-2}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "torch==${DEVICE_TORCH:-2.11.0}" setuptools wheel ninja pybind11 numpy

# Built in a copy of the working tree (what a call sends), so that this checkout's own build and
# its editable install are left as they are.
work=$(mktemp -d /tmp/dp-prebuild.XXXXXX)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
(cd "$work" && "$VENV/bin/python" setup.py build_ext --inplace >"$work/build.log" 2>&1) || { tail -40 "$work/build.log"; exit 1; }
# It loads under that torch, and its CPU scheduler step computes what its PyTorch twin does.
(cd "$work" && "$VENV/bin/python" -c "
import torch, dp_fast._ext as e
from dp_fast.ops.scheduler_step import scheduler_step, scheduler_step_ref
assert e.cuda_compiled(), 'built without its CUDA kernels'
m, x, n, c = (torch.randn(s, dtype=torch.float64) for s in ((3, 16, 7), (3, 16, 7), (3, 16, 7), (8,)))
assert torch.allclose(scheduler_step(m, x, c, n, 1.0), scheduler_step_ref(m, x, c, n, 1.0), rtol=1e-12, atol=1e-12), 'the CPU scheduler step differs'
")

rm -rf "$ROOT/prebuilt" && mkdir -p "$ROOT/prebuilt"
cp "$work"/dp_fast/_C*.so "$ROOT/prebuilt/"
"$VENV/bin/python" "$work/bench/prebuilt.py" stamp --dir "$ROOT/prebuilt"

# Triton's kernels for the prepared call (bench/results/README.md), compiled for sm_90 with the lent
# machine's Triton (bench/precompile.py): one line of its arguments a run. PRECOMPILE="" skips it.
cache=$("$VENV/bin/python" -c "import sys; sys.path.insert(0, '$work/bench'); import precompile; print(precompile.CACHE_DIR)")
rm -rf "$cache"
while IFS= read -r line; do
  [ -z "$line" ] || "$VENV/bin/python" "$work/bench/precompile.py" $line
done <<<"${PRECOMPILE-"--workloads W1,W2-ddim16
--workloads W1,W2-ddim16 --probe
--workloads W4
--workloads W4 --probe
--workloads W4 --set DP_FAST_WIDE_FINISH=kernel
--workloads W1,W2-ddim16 --set DP_FAST_GEMV_3D_MAX_COLUMNS=0
--workloads W1,W2-ddim16 --set DP_FAST_GEMV_3D_MAX_COLUMNS=16
--workloads W1,W2-ddim16 --set DP_FAST_PDL_TRIGGER=late
--workloads W2-ddim16 --set DP_FAST_HEAD=0
--workloads W1,W2-ddim16 --set DP_FAST_PDL=0
--workloads W2-ddim16 --probe --set DP_FAST_PDL=0
--workloads W4 --dtype bf16 --set DP_FAST_WIDE_FINISH=kernel
--workloads W4 --dtype bf16 --set DP_FAST_WIDE_FINISH=kernel,DP_FAST_WIDE_DEPTH=2"}"
# the cubins and their metadata alone: a cache hit reads nothing else (9 MB instead of 35 packed)
[ ! -d "$cache" ] || (cd "$cache" && find . -name '*.json' -o -name '*.cubin' | tar czf "$ROOT/prebuilt/triton-cache.tgz" -T -)
# the GPU code in it (Triton's wheel brings cuobjdump where the toolkit here has none)
obj=
for c in "$CUDA_HOME/bin/cuobjdump" "$VENV"/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump; do
  [ -x "$c" ] && { obj=$c; break; }
done
[ -z "$obj" ] || echo "GPU code: $("$obj" --list-elf "$ROOT"/prebuilt/_C*.so | grep -o 'sm_[0-9]*a\?' | sort | uniq -c | tr -s ' \n' ' ')"
du -sh "$ROOT/prebuilt"
