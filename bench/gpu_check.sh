#!/usr/bin/env bash
# The whole GPU job on a machine with an NVIDIA GPU: build with CUDA, run every test (GPU tests
# included), compute-sanitizer memcheck + racecheck over the CUDA tests, the op benchmarks on the
# GPU, and one report.
#
#   bash bench/gpu_check.sh [REPORT_DIR]      (default: gpu_report/)
#
# Needs: python3 with venv, nvcc, a visible GPU. Exits non-zero if any step fails (all steps run).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_report}
mkdir -p "$out"
report="$out/report.md"
status=0
step() {  # step NAME COMMAND...: run, tee the log, record pass/fail
  local name=$1; shift
  echo "== $name: $*" | tee -a "$report"
  if "$@" >"$out/$name.log" 2>&1; then echo "   PASS" | tee -a "$report"; else echo "   FAIL (see $name.log)" | tee -a "$report"; status=1; fi
  tail -n 5 "$out/$name.log" | sed 's/^/   | /' >>"$report"
}

: >"$report"
{ echo "# dreamer_ext GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -n 1; } >>"$report" 2>&1

py=${PYTHON:-python3}
if [ -z "${VIRTUAL_ENV:-}" ]; then
  "$py" -m venv "$out/venv" && py="$out/venv/bin/python"
fi
# torch: whatever is installed, else the default (CUDA) wheel from the registry
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install -q torch
step build env DREAMER_EXT_CUDA=ON DREAMER_EXT_EMU=ON "$py" -m pip install -q ".[test]"
step info "$py" -m dreamer_ext.info
step tests "$py" -m pytest python_tests -q
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer_$tool" compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
      "$py" -m pytest python_tests/test_gpu.py python_tests/test_ops.py -q -k "cuda or gpu"
  done
else
  echo "== compute-sanitizer not found: SKIPPED" | tee -a "$report"; status=1
fi
step bench "$py" -m pytest bench/test_ops_bench.py --bench-device cuda -q --benchmark-json="$out/ops_cuda.json"
"$py" bench/report.py "$out/ops_cuda.json" --command "bash bench/gpu_check.sh (pytest bench/test_ops_bench.py --bench-device cuda)" >>"$report" 2>&1
echo "overall: $([ $status = 0 ] && echo PASS || echo FAIL)" | tee -a "$report"
exit $status
