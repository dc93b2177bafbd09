#!/usr/bin/env bash
# ThreadSanitizer over the emulated CUDA kernels (csrc/cuda/*.cu compiled as C++ against csrc/emu/simt.h).
#
#   bash bench/tsan_emu.sh [pytest arguments]     (default: python_tests/test_emu.py python_tests/test_rollout_emu.py)
#
# The emulation runs every GPU thread of a block as an OS thread and __syncthreads as a real barrier, so a data race
# between GPU threads (a missing barrier, two threads writing one workspace slot, a read of a slot another warp is
# still writing) is a data race between OS threads, which ThreadSanitizer reports. This builds dreamer_ext._emu
# and _C with -fsanitize=thread into a scratch folder, copies the package and tests beside them, and runs the tests
# there with libtsan preloaded into the interpreter; the first report stops the run, is printed (from
# TSAN_WORK/tsan-report.*) and fails it (exit status 66). It does not
# touch the source tree's modules. It does not replace compute-sanitizer racecheck on a GPU (bench/gpu_check.sh):
# the emulator runs the blocks of a grid one after another, so races between blocks do not show here.
#
# Settings (environment): PYTHON (python3), CXX (g++), TSAN_WORK (the scratch folder; default: a new temp folder).
# Needs cmake, ninja, pybind11 and the test requirements in PYTHON's environment (the dev install has them).
set -euo pipefail

PYTHON=${PYTHON:-python3}
PYTHON=$("$PYTHON" -c "import sys; print(sys.executable)")  # absolute: the tests run from another folder
CXX=${CXX:-g++}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${TSAN_WORK:-$(mktemp -d)}
mkdir -p "$WORK"
LIBTSAN=$("$CXX" -print-file-name=libtsan.so)
if [[ ! -e "$LIBTSAN" ]]; then
  echo "tsan_emu: $CXX has no libtsan.so (install the compiler's ThreadSanitizer runtime)" >&2
  exit 2
fi
LIBTSAN=$(readlink -f "$LIBTSAN")
NINJA=$(command -v ninja || "$PYTHON" -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))')

echo "tsan_emu: building into $WORK/build"
"$PYTHON" -m cmake -S "$ROOT" -B "$WORK/build" -G Ninja -DCMAKE_MAKE_PROGRAM="$NINJA" -DDREAMER_EXT_EMU=ON -DDREAMER_EXT_CUDA=OFF \
  -DDREAMER_EXT_INPLACE=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$CXX" \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -O1 -g" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" \
  -DPython_EXECUTABLE="$PYTHON" -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)" >"$WORK/configure.log"
"$PYTHON" -m cmake --build "$WORK/build" --target _C _emu >"$WORK/build.log"

rm -rf "$WORK/tree" && mkdir -p "$WORK/tree"
cp -r "$ROOT/dreamer_ext" "$ROOT/python_tests" "$ROOT/bench" "$ROOT/pyproject.toml" "$WORK/tree/"
rm -f "$WORK/tree/dreamer_ext/"_C*.so "$WORK/tree/dreamer_ext/"_emu*.so
cp "$WORK/build/"_C*.so "$WORK/build/"_emu*.so "$WORK/tree/dreamer_ext/"

if [[ $# -eq 0 ]]; then
  set -- python_tests/test_emu.py python_tests/test_rollout_emu.py
fi
cd "$WORK/tree"
rm -f "$WORK"/tsan-report.*
echo "tsan_emu: pytest $* (libtsan: $LIBTSAN)"
rc=0
LD_PRELOAD="$LIBTSAN" TSAN_OPTIONS="halt_on_error=1 report_signal_unsafe=0 exitcode=66 log_path=$WORK/tsan-report ${TSAN_OPTIONS:-}" \
  DREAMER_EXT_EMU=ON OMP_NUM_THREADS=1 PYTHONPATH=. "$PYTHON" -m pytest -q -p no:cacheprovider "$@" || rc=$?
# the reports go to files: pytest captures the test's stderr and a halted process never shows it
for report in "$WORK"/tsan-report.*; do
  [[ -e "$report" ]] || continue
  echo "tsan_emu: ThreadSanitizer report $report:"
  head -n 60 "$report"
  rc=66
done
echo "tsan_emu: exit status $rc"
exit "$rc"
