#!/usr/bin/env bash
# The GPU job for a lent GPU machine, offline, in about 5 minutes, with one report.
#
#   bash bench/gpu_check.sh [REPORT_DIR]              (default: gpu_report/)
#   GPU_CHECK_DRY_RUN=1 bash bench/gpu_check.sh DIR   the same plan with stub commands (no GPU needed)
#
# The machine it is written for has no network: its python3 already holds torch (CUDA build),
# scikit-build-core, pybind11, pytest, pytest-benchmark and hypothesis; nvcc and compute-sanitizer are
# on the PATH. Wheels it lacks (gymnasium, ale-py, ...) come from .whl/ in the checkout: fill it here with
# `bash bench/gpu_wheels.sh` and carry it along. Nothing is fetched; nothing outside REPORT_DIR and the
# checkout's build/ and dreamer_ext/ is written.
#
# Steps, in order, each under its own `timeout` and all inside one time budget (GPU_CHECK_BUDGET_S,
# default 540 s, under the 10 minutes one command may run):
#   env           versions of the GPU, driver, nvcc, compute-sanitizer, python3 and torch
#   wheels        pip install --no-index --no-deps .whl/*.whl into REPORT_DIR/site (skipped without .whl/)
#   build         this package for sm_90 only (CUDAARCHS=90), with the emulation module, into the same
#                 folder: pip install --no-build-isolation --no-deps --no-index
#   gpu_tests     CUDA tests (test_gpu.py and the cuda cases of test_ops.py), CUDA_LAUNCH_BLOCKING=1, -x
#   stream_tests  the side-stream and CUDA-graph tests again without CUDA_LAUNCH_BLOCKING (with it,
#                 every launch is synchronous and a kernel on the wrong stream could not show)
#   memcheck      compute-sanitizer over the CUDA tests, torch's caching allocator off
#   synccheck     (PYTORCH_NO_CUDA_MEMORY_CACHING=1), API errors and cudaMemcpy/cudaMemset checks of torch's
#   initcheck     own calls not counted; memcheck/synccheck instrument only this package's kernels
#   racecheck     only when a kernel in csrc/cuda uses __shared__ memory (otherwise there is nothing to race)
#   bench         op benchmarks on the GPU at (15, 1024) and (15, 16384), eager references only
#   bench_report  their ratio table (bench/report.py)
#   rollout_bench the fused rollout, size12m bf16 at N = 1024 and 16384, against the PyTorch loop eager and
#                 compiled into one CUDA graph, with the fraction of the bf16 tensor-core peak
#                 (bench/rollout_gpu.py; on its own: python bench/rollout_gpu.py --device cuda)
#   suite         the whole test suite, with whatever time is left
# A failed build skips the steps after it. Exit status: 0 all steps passed; 1 a step failed or timed out;
# 2 nothing failed but a step was skipped (time budget spent, or a tool missing).
#
# Logs: REPORT_DIR/report.md holds the summary and the tail of every failed step's log; all logs are
# packed into REPORT_DIR/logs.tar.gz (few files, so the whole folder can travel back).
#
# Settings (environment): PYTHON (python3), GPU_CHECK_BUDGET_S, GPU_CHECK_TIMEOUTS ("step=seconds,...",
# overrides the per-step limits), GPU_CHECK_KERNELS (compute-sanitizer --kernel-name filter for
# memcheck/synccheck/racecheck), GPU_CHECK_SUITE=0 (leave out the whole-suite step), GPU_CHECK_CUDA_SRC
# (where to look for __shared__, default csrc/cuda), GPU_CHECK_WHEELS (the wheel folder, default .whl).
# Dry run (GPU_CHECK_DRY_RUN=1): every step runs a stub under the same timeout and accounting, printing
# the command it stands for; GPU_CHECK_DRY_RC="step=rc,..." and GPU_CHECK_DRY_SLEEP="step=seconds,..."
# make chosen stubs fail or take time. python_tests/test_gpu_check_script.py drives it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
out=${1:-gpu_report}
mkdir -p "$out/logs" || exit 1
out=$(cd "$out" && pwd)
report="$out/report.md"
logs="$out/logs"
site="$out/site"
py=${PYTHON:-python3}
dry=${GPU_CHECK_DRY_RUN:-0}
budget=${GPU_CHECK_BUDGET_S:-540}
cuda_src=${GPU_CHECK_CUDA_SRC:-csrc/cuda}
kernels=${GPU_CHECK_KERNELS:-regex=twohot|lambda_return|unary_kernel|rollout_kernel|act_kernel}
min_step=10  # a step is not started with less time than this left
started=$SECONDS
failed=0
skipped=0
build_ok=1

declare -A limit=([env]=30 [wheels]=60 [build]=240 [gpu_tests]=150 [stream_tests]=60 [memcheck]=150
                  [synccheck]=90 [initcheck]=150 [racecheck]=90 [bench]=120 [bench_report]=30
                  [rollout_bench]=240 [suite]=300)

# kv SPEC KEY DEFAULT: the value of KEY in "k1=v1,k2=v2", else DEFAULT
kv() {
  local pair
  IFS=',' read -ra pairs <<<"$1"
  for pair in "${pairs[@]}"; do
    if [ "${pair%%=*}" = "$2" ]; then echo "${pair#*=}"; return; fi
  done
  echo "$3"
}

for name in "${!limit[@]}"; do limit[$name]=$(kv "${GPU_CHECK_TIMEOUTS:-}" "$name" "${limit[$name]}"); done

say() { echo "$*" | tee -a "$report"; }

# record NAME RESULT DETAIL
record() { say "- **$1**: $2${3:+ ($3)}"; }

# step NAME COMMAND...: runs the command under its time limit (shrunk to the budget left), logs to
# logs/NAME.log, records PASS / FAIL / TIMEOUT / SKIPPED and returns the command's status.
step() {
  local name=$1; shift
  local left=$((budget - (SECONDS - started)))
  if ((left < min_step)); then
    record "$name" SKIPPED "time budget of ${budget} s spent"; skipped=1; return 3
  fi
  local lim=${limit[$name]}
  ((lim > left)) && lim=$left
  local log="$logs/$name.log" t0=$SECONDS rc cmd
  cmd=$(printf '%q ' "$@")
  printf '# step %s, limit %s s\n# command: %s\n' "$name" "$lim" "$cmd" >"$log"
  if [ "$dry" = 1 ]; then
    timeout -k 5 "$lim" bash -c 'echo "[dry-run] would run: $1"; sleep "$2"; exit "$3"' _ "$cmd" \
      "$(kv "${GPU_CHECK_DRY_SLEEP:-}" "$name" 0)" "$(kv "${GPU_CHECK_DRY_RC:-}" "$name" 0)" >>"$log" 2>&1
  else
    timeout -k 10 "$lim" "$@" >>"$log" 2>&1
  fi
  rc=$?
  local took=$((SECONDS - t0))
  case $rc in
    0) record "$name" PASS "${took} s of ${lim}" ;;
    124 | 137) record "$name" TIMEOUT "killed after ${lim} s"; failed=1 ;;
    *) record "$name" FAIL "exit ${rc} after ${took} s"; failed=1 ;;
  esac
  if [ $rc != 0 ]; then
    { echo; echo '```'; tail -n 25 "$log"; echo '```'; echo; } >>"$report"
  fi
  return $rc
}

# needs_build NAME: records a skip when the build failed
needs_build() {
  if [ $build_ok = 0 ]; then record "$1" SKIPPED "the build failed"; return 1; fi
  return 0
}

# the CUDA tests; compute-sanitizer runs them with torch's allocator cache off and API errors not counted,
# leaving out the CUDA-graph capture test (stream_tests covers it; the tools' graph support is not needed)
cuda_tests=(python_tests/test_gpu.py python_tests/test_ops.py -k "cuda or gpu")
pytest_cuda=("$py" -m pytest -x -q -p no:cacheprovider "${cuda_tests[@]}")
sanitizer=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 DREAMER_EXT_EMU=ON compute-sanitizer --error-exitcode 99
           --report-api-errors no --target-processes all --print-limit 50)
pytest_san=("$py" -m pytest -x -q -p no:cacheprovider python_tests/test_gpu.py python_tests/test_ops.py
            -k "(cuda or gpu) and not graph")

: >"$report"
say "# dreamer_ext GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
[ "$dry" = 1 ] && say "DRY RUN: every step below ran a stub, not its command." && say ""
say "Budget ${budget} s. Steps:"
say ""

# ---- env ----------------------------------------------------------------------------------------------
env_info='nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvcc --version | tail -n 2
command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -n 1 || echo "compute-sanitizer: not found"
"$1" -c "import sys, torch; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.is_available() and torch.cuda.get_device_name(0))"'
step env bash -c "$env_info" _ "$py" && grep -v '^# ' "$logs/env.log" | sed 's/^/    /' >>"$report"

have_sanitizer=1
if [ "$dry" != 1 ] && ! command -v compute-sanitizer >/dev/null; then have_sanitizer=0; fi

# ---- wheels and build -----------------------------------------------------------------------------------
wheel_dir=${GPU_CHECK_WHEELS:-.whl}
shopt -s nullglob
wheels=("$wheel_dir"/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
  step wheels "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${wheels[@]}"
else
  record wheels SKIPPED "no wheels in $wheel_dir/: run bash bench/gpu_wheels.sh where pip works and carry .whl (the suite's env tests need gymnasium and ale-py)"
fi

step build env CUDAARCHS=90 DREAMER_EXT_CUDA=ON DREAMER_EXT_EMU=ON "$py" -m pip install -q --no-build-isolation \
  --no-deps --no-index --no-cache-dir --upgrade --target "$site" . || build_ok=0
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"

# ---- tests, sanitizers, benchmarks ------------------------------------------------------------------------
if needs_build gpu_tests; then
  step gpu_tests env CUDA_LAUNCH_BLOCKING=1 DREAMER_EXT_EMU=ON "${pytest_cuda[@]}"
fi
if needs_build stream_tests; then
  step stream_tests "$py" -m pytest -x -q -p no:cacheprovider python_tests/test_gpu.py -k "stream or graph"
fi

for tool in memcheck synccheck initcheck racecheck; do
  needs_build $tool || continue
  if [ $have_sanitizer = 0 ]; then record $tool SKIPPED "compute-sanitizer not found"; skipped=1; continue; fi
  case $tool in
    memcheck)
      step memcheck "${sanitizer[@]}" --tool memcheck --check-api-memory-access no --kernel-name "$kernels" \
        "${pytest_san[@]}" ;;
    synccheck)
      step synccheck "${sanitizer[@]}" --tool synccheck --kernel-name "$kernels" "${pytest_san[@]}" ;;
    initcheck)  # every kernel instrumented: initcheck learns which bytes are initialised from the kernels that write them
      step initcheck "${sanitizer[@]}" --tool initcheck --check-api-memory-access no "${pytest_san[@]}" ;;
    racecheck)
      if grep -lq "__shared__" "$cuda_src"/*.cu 2>/dev/null; then
        step racecheck "${sanitizer[@]}" --tool racecheck --kernel-name "$kernels" "${pytest_san[@]}"
      else
        record racecheck "NOT NEEDED" "no kernel in $cuda_src uses __shared__ memory"
      fi ;;
  esac
done

if needs_build bench; then
  step bench "$py" -m pytest -q -p no:cacheprovider bench/test_ops_bench.py --bench-device cuda --no-compile \
    -k "T15xB1024 or T15xB16384" --benchmark-json="$out/ops_cuda.json" &&
    step bench_report "$py" bench/report.py "$out/ops_cuda.json" --out "$out/ops_cuda.md" \
      --command "bash bench/gpu_check.sh (pytest bench/test_ops_bench.py --bench-device cuda --no-compile)" &&
    [ -f "$out/ops_cuda.md" ] && { echo; cat "$out/ops_cuda.md"; echo; } >>"$report"
fi

if needs_build rollout_bench; then
  step rollout_bench "$py" bench/rollout_gpu.py --device cuda --out "$out/rollout_cuda.md" &&
    [ -f "$out/rollout_cuda.md" ] && { echo; cat "$out/rollout_cuda.md"; echo; } >>"$report"
fi

if [ "${GPU_CHECK_SUITE:-1}" != 0 ] && needs_build suite; then
  step suite env DREAMER_EXT_EMU=ON "$py" -m pytest -q -p no:cacheprovider python_tests
fi

# ---- summary ------------------------------------------------------------------------------------------------
say ""
if [ $failed != 0 ]; then verdict=FAIL; code=1
elif [ $skipped != 0 ]; then verdict=INCOMPLETE; code=2
else verdict=PASS; code=0; fi
say "overall: $verdict ($((SECONDS - started)) s)"
tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
exit $code
