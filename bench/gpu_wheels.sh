#!/usr/bin/env bash
# Fetch, on a machine where pip can reach the package index, the wheels that the offline GPU machine's
# python3 (CPython 3.12, x86-64 Linux) lacks for this package and its test suite, into .whl/ (ignored by
# git). bench/gpu_check.sh installs them there with `pip install --no-index --no-deps`.
#
#   bash bench/gpu_wheels.sh [DIR]        (default: .whl)
#
# The GPU machine already has torch, numpy, tqdm, tensorboard, pillow, cloudpickle, typing-extensions,
# scikit-build-core, pybind11, pytest, pytest-benchmark and hypothesis. Missing: gymnasium, its
# farama-notifications, and ale-py. Versions are those installed in the python3 running this script
# when it has them (so the GPU machine tests what was tested here), otherwise the pins below.
# Override: PYTHON, GPU_WHEELS_PYTHON_VERSION (3.12), GPU_WHEELS="name==version ...".
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
py=${PYTHON:-python3}
pyver=${GPU_WHEELS_PYTHON_VERSION:-3.12}

# name and fallback version of each missing package
declare -A pin=([gymnasium]=1.4.0 [farama-notifications]=0.0.6 [ale-py]=0.12.1)

if [ -n "${GPU_WHEELS:-}" ]; then
  read -ra specs <<<"$GPU_WHEELS"
else
  specs=()
  for name in gymnasium farama-notifications ale-py; do
    v=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null || echo "${pin[$name]}")
    specs+=("$name==$v")
  done
fi

mkdir -p "$dir"
rm -f "$dir"/*.whl  # one version of each package: two would stop the install there
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"$py" -m pip download --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" -d "$dir" "${specs[@]}"
echo "wheels in $dir/ ($(du -sh "$dir" | cut -f1)):"
ls -1 "$dir"
echo "Carry $dir with the device tool (carry: [\"$dir\"]) and run: bash bench/gpu_check.sh \$OUT/gpu_report"
