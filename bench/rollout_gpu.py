"""The fused rollout on a GPU against the PyTorch imagination loop, eager and compiled into one CUDA graph.

    python bench/rollout_gpu.py [--device cuda] [--preset size12m] [--n 1024,16384] [--precision bf16]
                                [--iters 20] [--peak-tflops T] [--no-compile] [--out FILE.md]

For each N: H = 15 steps from N start states, discrete actions (17), on the same Philox uniforms:
- ``kernel``: ``fused_rollout.fused_imagine`` (``ops.rollout`` on CUDA tensors: the row-owned kernel, or the phase
  kernels at N >= 1024 with deter >= 1024);
- ``eager``: the model's own loop (``RSSM.imagine`` with the actor's sampler), under a bf16 autocast for bf16;
- ``compiled``: the loop's step (actor, sample, core, prior, sample) through ``torch.compile(dynamic=False)`` and
  the whole 15-step loop captured in one CUDA graph, replayed per rollout (on a CPU: the compiled step, no graph).
Times are medians of ``--iters`` calls (the eager loop: a quarter of them, at least one; CUDA events on a GPU). The
table also gives the sample agreement of the kernel's actions with the eager loop's (same uniforms: only samples
next to a rounding boundary may differ), the model's MACs per row and step (one-hot inputs counted as the rows they
gather), the kernel's TFLOP/s, and that as a fraction of the device's dense bf16 tensor-core peak (H100 SXM / H200:
989 TFLOP/s, H100 PCIe: 756; ``--peak-tflops`` for any other device).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dreamer_ext import ops  # noqa: E402
from dreamer_ext.agent import Agent  # noqa: E402
from dreamer_ext.config import make_config  # noqa: E402
from dreamer_ext.envs.spec import EnvSpec  # noqa: E402
from dreamer_ext.fused_rollout import RolloutWeights, fused_imagine, rollout_uniforms  # noqa: E402

H, A, SEED = 15, 17, 7
PEAKS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4))  # dense bf16 TFLOP/s, first match wins


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: a functional check of this script")
    p.add_argument("--preset", default="size12m")
    p.add_argument("--n", default="1024,16384", help="comma-separated numbers of start states")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--iters", type=int, default=20, help="timed calls per implementation (median)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (TFLOP/s)")
    p.add_argument("--no-compile", action="store_true", help="leave out the compiled loop")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    ns = p.parse_args(argv)
    raw = ns.n
    ns.n = [int(x) for x in raw.split(",") if x.strip().isdigit()]
    if len(ns.n) != len(raw.split(",")) or min(ns.n) < 1:
        p.error(f"--n: expected comma-separated positive integers, got {raw!r}")
    if ns.iters < 1:
        p.error(f"--iters: expected >= 1, got {ns.iters}")
    if ns.device == "cuda" and not torch.cuda.is_available():
        p.error("--device=cuda: torch sees no CUDA device")
    return ns


def macs_per_row_step(weights: RolloutWeights) -> int:
    """Multiply-adds of one imagination step for one row: every matmul of the actor, core and prior, the one-hot
    inputs (z into the actor's first layer and ``in_z``, a discrete action into ``in_a``) as the rows they gather."""
    rssm, actor = weights.rssm, weights.actor
    total = 0
    for name, shape in ops.rollout_weight_shapes(weights.dims(1, 1)):
        if not name.endswith(".W"):
            continue
        *groups, k, o = shape
        if name == "actor.0.W":
            k = rssm.deter + rssm.S
        elif name == "in_z.W":
            k = rssm.S
        elif name == "in_a.W" and actor.discrete:
            k = 1
        total += (groups[0] if groups else 1) * k * o
    return total


def peak_tflops(ns) -> float | None:
    if ns.peak_tflops is not None:
        return ns.peak_tflops
    if ns.device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((p for key, p in PEAKS if all(w in name for w in key.split())), None)


def timer(device: str):
    """fn, iters -> median seconds per call."""
    def run(fn, iters):
        fn()  # warm-up (compile, capture, weight packing)
        times = []
        for _ in range(iters):
            if device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return run


def compiled_loop(agent, start, uniforms, bf16: bool, device: str):
    """The loop with its step compiled and, on a GPU, all H steps in one CUDA graph: () -> actions [H, N, A]."""
    rssm, policy = agent.wm.rssm, agent.behavior.policy_fn

    def step(h, z, ua, ul):
        state = {"h": h, "z": z}
        a = policy(rssm.feat(state), ua)
        nxt = rssm.img_step(state, a, ul)
        return nxt["h"], nxt["z"], a

    step_c = torch.compile(step, dynamic=False)
    h0, z0 = start["h"].clone(), start["z"].clone()
    ua, ul = uniforms["action"].clone(), uniforms["latent"].clone()

    def loop():
        with torch.no_grad(), torch.autocast(device, torch.bfloat16, enabled=bf16):
            h, z, acts = h0, z0, []
            for t in range(H):
                h, z, a = step_c(h, z, ua[t], ul[t])
                acts.append(a)
            return torch.stack(acts)

    if device != "cuda":
        return loop, "compiled step"
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # compile and warm up outside the capture
            loop()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            out = loop()
    except Exception as e:  # noqa: BLE001 - report it and time the compiled step without a graph
        return loop, f"compiled step, no graph ({type(e).__name__}: {str(e).splitlines()[0][:80]})"

    def replay():
        graph.replay()
        return out
    return replay, "compiled step + CUDA graph"


def bench_n(ns, n: int, run) -> dict:
    torch.manual_seed(0)
    spec = EnvSpec(obs={"vector": ((5,), "float32")}, act_dim=A, discrete=True)
    agent = Agent(make_config(ns.preset, device=ns.device, precision="fp32"), spec)
    rssm, bf16 = agent.wm.rssm, ns.precision == "bf16"
    g = torch.Generator().manual_seed(1)
    start = {"h": (torch.rand(n, rssm.deter, generator=g) * 2 - 1).to(ns.device),
             "z": torch.nn.functional.one_hot(torch.randint(0, rssm.C, (n, rssm.S), generator=g),
                                              rssm.C).float().to(ns.device)}
    uniforms = rollout_uniforms(SEED, n, H, rssm.S, 1, device=ns.device)
    weights = RolloutWeights(rssm, agent.behavior.actor)

    def kernel():
        return fused_imagine(weights, start, H, SEED, bf16)

    def eager():
        with torch.no_grad(), torch.autocast(ns.device, torch.bfloat16, enabled=bf16):
            return rssm.imagine(agent.behavior.policy_fn, start, H, uniforms)

    row = {"n": n, "kernel": run(kernel, ns.iters), "eager": run(eager, max(1, ns.iters // 4))}
    agree = (kernel()["action"].argmax(-1) == eager()["action"].argmax(-1)).float().mean().item()
    row["agreement"] = agree
    if not ns.no_compile:
        fn, how = compiled_loop(agent, start, uniforms, bf16, ns.device)
        row["compiled"], row["compiled_how"] = run(fn, ns.iters), how
    row["macs"] = macs_per_row_step(weights)
    row["tflops"] = 2 * row["macs"] * n * H / row["kernel"] / 1e12
    return row


def table(ns, rows: list[dict], peak: float | None) -> str:
    dev = torch.cuda.get_device_name(0) if ns.device == "cuda" else "CPU"
    how = next((r["compiled_how"] for r in rows if "compiled_how" in r), "left out (--no-compile)")
    lines = [f"Fused rollout on {dev}, {ns.preset}, {ns.precision}, H = {H}, discrete actions ({A}); torch "
             f"{torch.__version__}; median of {ns.iters} calls (eager: {max(1, ns.iters // 4)}); compiled: {how}; "
             "peak used: "
             + (f"{peak:g} TFLOP/s (dense bf16)" if peak else "none (pass --peak-tflops)"), "",
             "| N | kernel | eager loop | compiled loop | eager / kernel | compiled / kernel | action agreement "
             "| MACs per row-step | kernel TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = r.get("compiled")
        lines.append(
            f"| {r['n']:,} | {r['kernel'] * 1e3:.3f} ms | {r['eager'] * 1e3:.3f} ms | "
            + (f"{comp * 1e3:.3f} ms" if comp else "—") + f" | {r['eager'] / r['kernel']:.2f}× | "
            + (f"{comp / r['kernel']:.2f}×" if comp else "—") + f" | {r['agreement'] * 100:.2f} % | "
            f"{r['macs'] / 1e6:.2f} M | {r['tflops']:.1f} | " + (f"{r['tflops'] / peak * 100:.1f} %" if peak else "—")
            + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ns = parse(sys.argv[1:] if argv is None else argv)
    run = timer(ns.device)
    rows = [bench_n(ns, n, run) for n in ns.n]
    text = table(ns, rows, peak_tflops(ns))
    print(text)
    if ns.out:
        Path(ns.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
