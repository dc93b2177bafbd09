"""Does the size1m world model learn to reconstruct Atari frames? (ALE/Asterix-v5, Atari100k protocol)

Collects ``--steps`` env steps (default 5,000) with the untrained agent's policy into the replay, then runs 500 agent updates
(batches of the default 16 x 64) and reports the image reconstruction loss ``loss/rec_image`` (squared error summed over
pixels, averaged over batch and time):

* ``initial``: the loss of the first update's batch, computed before any optimiser step;
* ``final``: the mean over the last 20 updates.

Last line: ``recon_ratio=<final / initial>`` (well below 1 means the decoder learns).
Usage: ``PYTHONPATH=. python bench/learn_asterix_recon.py [--device=cuda] [--steps=5000] [--seed=0]``.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dreamer_ext import cli, ops  # noqa: E402
from dreamer_ext.envs import make_env  # noqa: E402
from dreamer_ext.replay import Replay  # noqa: E402
from dreamer_ext.loop import env_kwargs, to_torch, tune_cpu_allocator  # noqa: E402
from dreamer_ext.train import seed_everything  # noqa: E402

UPDATES = 500
KEY = "loss/rec_image"


def main() -> float:
    task = ["--env=ALE/Asterix-v5", "--preset=size1m", "--steps=5000", "--num_envs=1"]
    cfg = cli.parse_or_exit(task + sys.argv[1:], prog="learn_asterix_recon.py")
    from dreamer_ext.agent import Agent

    ops.set_backend(cfg.backend)
    seed_everything(cfg.seed)
    envs = make_env(cfg.env, cfg.seed, cfg.num_envs, **env_kwargs(cfg))
    tune_cpu_allocator()
    agent = Agent(cfg, envs.spec)
    print(f"device: {agent.device} backend: {ops.get_backend()} params: {agent.param_count()['total']:,}", flush=True)
    replay = Replay(cfg.replay_capacity, cfg.batch_length, online=cfg.replay_online, seed=cfg.seed)

    # collect frames with the (untrained) policy
    t0 = time.time()
    obs, carry = envs.reset(), agent.initial_carry(cfg.num_envs)
    steps = 0
    while steps < cfg.steps:
        action, carry = agent.policy(to_torch(obs, agent.device), carry, sample=True)
        action = action.cpu().numpy().astype(np.float32)
        action[obs["is_last"]] = 0.0
        replay.add_batch({**obs, "action": action})
        obs = envs.step(action)
        steps += cfg.num_envs
    print(f"collected {steps} env steps in {time.time() - t0:.0f}s", flush=True)

    # train the agent on replayed windows
    losses = []
    t0 = time.time()
    for i in range(UPDATES):
        metrics = agent.train_step(to_torch(replay.sample(cfg.batch_size), agent.device))
        losses.append(metrics[KEY])
        if i % 50 == 0 or i == UPDATES - 1:
            print(f"update {i}: {KEY}={losses[-1]:.2f} ({(i + 1) / (time.time() - t0):.2f} updates/s)", flush=True)
    initial, final = losses[0], float(np.mean(losses[-20:]))
    print(f"initial {KEY}={initial:.3f} final {KEY}={final:.3f} (mean of last 20 of {UPDATES} updates)")
    ratio = final / initial
    print(f"recon_ratio={ratio:.4f}", flush=True)
    envs.close()
    return ratio


if __name__ == "__main__":
    main()
