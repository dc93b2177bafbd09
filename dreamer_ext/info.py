"""``python -m dreamer_ext.info``: versions, build flags, CUDA, and which backend each op uses."""
from __future__ import annotations

import platform
import sys


def collect() -> dict:
    import torch

    import dreamer_ext
    from dreamer_ext import _C, ops

    build = dict(_C.build_info())
    return {
        "dreamer_ext": dreamer_ext.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_built": bool(_C.has_cuda()),
        "cuda_archs": build.get("cuda_archs", "-"),
        "nvcc": build.get("cuda_compiler", "-"),
        "openmp": build.get("openmp"),
        "compiler": build.get("compiler"),
        "cpu_kernels": build.get("cpu_kernels", "-"),
        "gpu_visible": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
        "backend": ops.get_backend(),
        "ops": ops.backend_report(),
    }


def main() -> None:
    info = collect()
    ops_report = info.pop("ops")
    width = max(map(len, info)) + 1
    for k, v in info.items():
        print(f"{k + ':':<{width}} {v}")
    print("ops:")
    for name, where in ops_report.items():
        print(f"  {name:<22} {where}")


if __name__ == "__main__":
    main()
