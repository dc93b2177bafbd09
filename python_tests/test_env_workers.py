"""Env workers (--env_workers): the training envs step in worker processes (gymnasium AsyncVectorEnv) while the learner
updates. Same transitions as in-process stepping for the same seeds, a worker's error surfaces as one clear error,
and a whole training run is identical with and without workers."""
import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from dreamer_ext.envs import make_env


class CrashEnv(gym.Env):
    """Vector observations; raises on the 5th step."""

    def __init__(self):
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action):
        self.t += 1
        if self.t == 5:
            raise ValueError("the simulator broke at step 5")
        return np.full(3, 0.1 * self.t, np.float32), 1.0, False, False, {}


gym.register("EnvWorkersTestCrash-v0", entry_point=CrashEnv)


def rollout(env, steps=300, seed=0):
    rng = np.random.default_rng(seed)
    out = [env.reset()]
    for _ in range(steps):
        a = np.eye(env.spec.act_dim, dtype=np.float32)[rng.integers(env.spec.act_dim, size=env.num_envs)]
        env.step_async(a)
        out.append(env.step_wait())
    env.close()
    return out


def test_workers_give_the_same_transitions_as_in_process_stepping():
    a = rollout(make_env("CartPole-v1", seed=3, num_envs=2))
    b = rollout(make_env("CartPole-v1", seed=3, num_envs=2, asynchronous=True))
    assert sum(int(o["is_first"].sum()) for o in a) > 4  # several episodes, so resets are compared too
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_a_crashing_worker_is_an_error_naming_it():
    env = make_env("EnvWorkersTestCrash-v0", seed=0, num_envs=1, asynchronous=True)
    env.reset()
    with pytest.raises(RuntimeError, match="env worker: .*simulator broke at step 5"):
        for _ in range(6):
            env.step(np.eye(2, dtype=np.float32)[[0]])
    env.close()


def test_step_async_and_wait_must_alternate():
    env = make_env("CartPole-v1", seed=0)
    env.reset()
    with pytest.raises(RuntimeError, match="without step_async"):
        env.step_wait()
    env.step_async(np.eye(2, dtype=np.float32)[[0]])
    with pytest.raises(RuntimeError, match="twice"):
        env.step_async(np.eye(2, dtype=np.float32)[[0]])
    env.close()


@pytest.mark.slow
def test_training_is_identical_with_and_without_workers(tmp_path):
    from dreamer_ext import cli
    from dreamer_ext.train import train
    tiny = ["--env=CartPole-v1", "--preset=size1m", "--rssm.deter=32", "--rssm.hidden=16", "--rssm.stoch=4",
            "--rssm.classes=4", "--rssm.blocks=4", "--encoder.mlp_units=16", "--decoder.mlp_units=16",
            "--heads.units=16", "--actor.units=16", "--critic.units=16", "--batch_size=2", "--batch_length=8",
            "--train_ratio=16", "--steps=200", "--num_envs=2", "--eval_every=0", "--checkpoint_every=0",
            "--tensorboard=false", "--device=cpu", "--log_every=100", "--seed=4"]
    logs = []
    for workers in (0, 2):
        cfg = cli.parse([*tiny, f"--env_workers={workers}", f"--logdir={tmp_path / str(workers)}"])
        train(cfg)
        with open(tmp_path / str(workers) / "metrics.jsonl") as f:
            logs.append([{k: v for k, v in json.loads(l).items() if k not in ("time", "steps_per_s", "updates_per_s")}
                         for l in f])
    episodes = [r for r in logs[0] if "episode_return" in r]
    assert len(episodes) > 5 and any("train/loss/total" in r for r in logs[0])
    assert logs[0] == logs[1]


def test_env_workers_option_is_checked():
    from dreamer_ext import cli
    with pytest.raises(cli.CLIError, match="--env_workers"):
        cli.parse(["--num_envs=2", "--env_workers=1"])


def test_a_killed_worker_process_is_an_error_not_a_hang():
    env = make_env("CartPole-v1", seed=0, num_envs=2, asynchronous=True)
    env.reset()
    env._envs.processes[1].kill()
    env._envs.processes[1].join()
    with pytest.raises(RuntimeError, match="env worker"):
        env.step(np.eye(2, dtype=np.float32)[[0, 1]])
