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

import types  # noqa: E402

import numpy as np  # noqa: E402

from dreamer_ext import cli, ops  # noqa: E402
from dreamer_ext.envs import make_env  # noqa: E402
from dreamer_ext.loop import Mean, env_kwargs, tune_cpu_allocator  # noqa: E402
from dreamer_ext.train import TrainState, act_and_step, make_replay, seed_everything, train_once  # noqa: E402

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
    # the training loop's own acting and update steps, on a run of just what they touch
    run = types.SimpleNamespace(cfg=cfg, device=agent.device, agent=agent, replay=make_replay(cfg), envs=envs,
                                st=TrainState())

    # collect frames with the (untrained) policy
    t0 = time.time()
    obs, carry = envs.reset(), agent.initial_carry(cfg.num_envs)
    while run.st.step < cfg.steps:
        obs, carry = act_and_step(run, obs, carry)
    print(f"collected {run.st.step} env steps in {time.time() - t0:.0f}s", flush=True)

    # train the agent on replayed windows
    losses = []
    t0 = time.time()
    for i in range(UPDATES):
        metrics = Mean()
        train_once(run, metrics)
        losses.append(metrics.result()[KEY])
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
