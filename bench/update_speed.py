"""Seconds per full ``Agent.train_step`` (batch 16×64, 64×64×3 uint8 images, 17 discrete actions) and per
imagination rollout alone (B·T = 1024 starts, H = 15), at the default config (V2) unless told otherwise.

    python bench/update_speed.py --preset size12m [--iters 3] [--device cpu] [--precision auto|bf16|fp32]

The last line reads exactly ``seconds_per_update=X imagination_seconds=Y``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="size12m")
    ap.add_argument("--iters", type=int, default=3, help="timed updates (after one warm-up update)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default=None, help="ops backend (kernels|reference); default: environment")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batch-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--precision", default="auto", help="auto | bf16 | fp32 (compute precision)")
    args = ap.parse_args()
    if args.backend:
        os.environ["DREAMER_EXT_BACKEND"] = args.backend
    import torch

    from dreamer_ext.agent import Agent
    from dreamer_ext.config import make_config
    from dreamer_ext.envs.spec import EnvSpec
    from dreamer_ext.loop import tune_cpu_allocator

    tune_cpu_allocator()  # as the programs do (the library itself never changes process-wide settings)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = make_config(args.preset, device=args.device, batch_size=args.batch_size, batch_length=args.batch_length,
                      precision=args.precision)
    A = 17
    spec = EnvSpec(obs={"image": ((64, 64, 3), "uint8")}, act_dim=A, discrete=True)
    agent = Agent(cfg, spec)
    dev = agent.device
    B, T = cfg.batch_size, cfg.batch_length + cfg.replay_context  # windows hold the context step too
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randint(0, 256, (B, T, 64, 64, 3), dtype=torch.uint8, generator=g),
        "action": torch.nn.functional.one_hot(torch.randint(0, A, (B, T), generator=g), A).float(),
        "reward": torch.randn(B, T, generator=g),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "is_terminal": torch.rand(B, T, generator=g) < 0.01,
    }
    batch["is_last"] = batch["is_terminal"].clone()
    batch["is_first"][:, 0] = True
    if cfg.replay_context:  # stored RSSM states, as the replay holds them
        batch.update(agent.latents({"h": torch.rand(B, T, agent.wm.rssm.deter, generator=g) * 2 - 1,
                                    "z": torch.nn.functional.one_hot(torch.randint(
                                        0, agent.wm.rssm.C, (B, T, agent.wm.rssm.S), generator=g),
                                        agent.wm.rssm.C).float()}))
    batch = {k: v.to(dev) for k, v in batch.items()}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    counts = agent.param_count()
    print(f"device={dev} preset={args.preset} params={counts['total']:,} threads={torch.get_num_threads()} "
          f"compute={agent.compute_dtype} (--precision={args.precision})")
    agent.train_step(batch)  # warm-up
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        metrics = agent.train_step(batch)
    sync()
    per_update = (time.perf_counter() - t0) / args.iters
    print(f"loss/total={metrics['loss/total']:.3f} loss/critic={metrics['loss/critic']:.3f}")

    N = B * cfg.batch_length  # imagination starts from every trained step
    rssm = agent.wm.rssm
    start = {"h": torch.randn(N, rssm.deter, device=dev) * 0.1,
             "z": torch.nn.functional.one_hot(torch.randint(0, rssm.C, (N, rssm.S), device=dev), rssm.C).float()}
    with agent.autocast():
        agent.behavior.imagine(agent.wm, start)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        with agent.autocast():
            agent.behavior.imagine(agent.wm, start)
    sync()
    imag = (time.perf_counter() - t0) / args.iters
    print(f"seconds_per_update={per_update:.4f} imagination_seconds={imag:.4f}")


if __name__ == "__main__":
    main()
