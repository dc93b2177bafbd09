"""How the data-parallel gradients are averaged, measured: the agent's one flat all-reduce
(:meth:`dreamer_ext.dist.Dist.average_`) against one all-reduce per parameter tensor and against torch's
``DistributedDataParallel`` (bucketed all-reduces launched from backward hooks, overlapping the backward pass).

Usage: ``torchrun --nproc_per_node=2 bench/allreduce_speed.py [--presets size1m,size12m] [--iters 20]``
(gloo on CPUs; NCCL with ``--device cuda``). Rank 0 prints one markdown table. Every method averages gradients of
the real agent's parameter shapes for the preset (an Atari-shaped spec). For DDP the cost is the backward pass of
a module holding those parameters with DDP minus the same backward without it (what DDP adds to an update); the
other two are timed on their own, after the same backward.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from dreamer_ext.agent import Agent  # noqa: E402
from dreamer_ext.config import make_config  # noqa: E402
from dreamer_ext.dist import from_env  # noqa: E402
from dreamer_ext.envs.spec import EnvSpec  # noqa: E402


class Holder(nn.Module):
    """The agent's parameter shapes; ``forward()`` = Σ_p <p, c_p> with fixed c_p, so backward gives grad_p = c_p."""

    def __init__(self, shapes, device):
        super().__init__()
        self.ps = nn.ParameterList(nn.Parameter(torch.zeros(s, device=device)) for s in shapes)
        self.cs = [torch.randn(s, device=device) for s in shapes]

    def forward(self) -> torch.Tensor:
        return sum((p * c).sum() for p, c in zip(self.ps, self.cs))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, iters, device) -> float:
    """Median seconds of ``fn()`` over ``iters`` runs (after 3 warm-up runs), every rank in step."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(iters):
        dist.barrier()
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return sorted(out)[len(out) // 2]


def measure(preset: str, d, device, iters: int) -> dict:
    spec = EnvSpec(obs={"image": ((64, 64, 3), "uint8")}, act_dim=9, discrete=True)
    agent = Agent(make_config(preset, device="cpu", precision="fp32"), spec)
    shapes = [tuple(p.shape) for p in agent.parameters()]
    numel = sum(p.numel() for p in agent.parameters())
    del agent
    torch.manual_seed(d.rank)  # each rank its own gradients
    plain = Holder(shapes, device)
    ddp_mod = Holder(shapes, device)
    ddp_mod.cs = plain.cs
    ddp = nn.parallel.DistributedDataParallel(ddp_mod, device_ids=[device.index] if device.type == "cuda" else None)

    def backward(m):
        def run():
            for p in m.parameters():
                p.grad = None
            m().backward()
        return run

    def flat():
        d.average_([p.grad for p in plain.ps])

    def per_tensor():
        for p in plain.ps:
            dist.all_reduce(p.grad)
            p.grad.div_(d.world)

    plain_bwd = timed(backward(plain), iters, device)
    backward(plain)()
    out = {"params": numel, "tensors": len(shapes), "backward": plain_bwd,
           "flat": timed(flat, iters, device), "per_tensor": timed(per_tensor, iters, device),
           "ddp": timed(backward(ddp), iters, device) - plain_bwd}
    # every method must have averaged the same thing
    backward(plain)()
    flat()
    backward(ddp)()
    for a, b in zip(plain.ps, ddp_mod.ps):
        torch.testing.assert_close(a.grad, b.grad)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="size1m,size12m")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    d = from_env(device)
    if not d.active:
        raise SystemExit("run me under torchrun with 2 or more processes: torchrun --nproc_per_node=2 " + sys.argv[0])
    if device.type == "cuda":
        device = d.device
    rows = [(p, measure(p, d, device, args.iters)) for p in args.presets.split(",")]
    if d.is_main:
        backend = dist.get_backend()
        print(f"{d.world} ranks, {backend}, {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s) "
              f"per rank; median of {args.iters}")
        print()
        print("| preset | gradient floats (tensors) | backward alone | flat all-reduce | one all-reduce per tensor "
              "| DDP (added to backward) |")
        print("|---|---|---|---|---|---|")
        for name, r in rows:
            ms = lambda s: f"{s * 1e3:.2f} ms"  # noqa: E731
            print(f"| {name} | {r['params']:,} ({r['tensors']}) | {ms(r['backward'])} | **{ms(r['flat'])}** | "
                  f"{ms(r['per_tensor'])} | {ms(r['ddp'])} |")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
