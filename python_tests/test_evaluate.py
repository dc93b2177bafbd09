"""The evaluation program (dreamer_ext.evaluate) on a checkpoint written by the real training program, and its
episode runner on a scripted fake environment."""
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dreamer_ext.evaluate import EvalOptions, evaluate_checkpoint, main
from dreamer_ext.loop import run_episodes, summarize
from test_train_smoke import TINY

T975_DF4 = 2.7764  # Student t 0.975 quantile, 4 degrees of freedom (printed table)


# ------------------------------------------------------------------------------------------------ a real checkpoint
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from dreamer_ext import ops
    from dreamer_ext.train import main as train_main

    logdir = tmp_path_factory.mktemp("eval") / "run"
    before = ops.get_backend()
    try:
        rc = train_main(["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--steps=200", "--eval_every=0",
                         "--checkpoint_every=100", "--tensorboard=false"])
    finally:
        ops.set_backend(before)
    assert rc in (0, None)
    assert (logdir / "checkpoints" / "ckpt-000000000200.pt").is_file()
    return logdir


def ckpt_file(run_dir, step=200):
    return str(run_dir / "checkpoints" / f"ckpt-{step:012d}.pt")


def run_main(capsys, *args):
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def parse_return_line(out):
    m = re.search(r"^return: (-?[\d.]+) ± (n/a|-?[\d.]+) \(95% CI, (\d+) episodes, sample policy, distractor none; "
                  r"std (n/a|[\d.]+)\)$",
                  out, re.M)
    assert m, out
    return m.groups()


@pytest.fixture(scope="module")
def five_episodes(run_dir, tmp_path_factory):
    """``--episodes 5 --json`` on the run directory, evaluated once for several tests."""
    out_dir = tmp_path_factory.mktemp("json") / "nested" / "dir"  # does not exist yet
    out_json = out_dir / "eval.json"
    buf = io.StringIO()  # capsys is function-scoped: capture the printed lines by hand
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        rc = main(["--checkpoint", str(run_dir), "--episodes", "5", "--json", str(out_json), "--device=cpu"])
    return rc, buf.getvalue(), out_json, time.perf_counter() - t0


def test_json_summary_matches_returns(five_episodes, run_dir):
    rc, out, out_json, wall = five_episodes
    assert rc == 0
    res = json.loads(out_json.read_text())
    assert res["env"] == "CartPole-v1" and res["step"] == 200 and res["episodes"] == 5
    assert res["checkpoint"] == os.path.abspath(ckpt_file(run_dir))
    returns, lengths = np.array(res["returns"], float), np.array(res["lengths"])
    assert len(returns) == 5 and len(lengths) == 5
    assert all(isinstance(x, int) for x in res["lengths"]) and (lengths >= 1).all()
    # CartPole pays 1 per step (including the last), so every return equals its episode length
    np.testing.assert_array_equal(returns, lengths.astype(float))
    assert res["mean"] == pytest.approx(returns.mean(), rel=1e-12)
    assert res["std"] == pytest.approx(returns.std(ddof=1), rel=1e-12)
    assert res["ci95"] == pytest.approx(T975_DF4 * returns.std(ddof=1) / math.sqrt(5), rel=1e-4, abs=1e-12)
    run_seed = json.loads((run_dir / "config.json").read_text())["seed"]
    assert res["seed"] == run_seed + 20000  # default: apart from the training and in-training eval seeds
    assert 0 < res["seconds"] <= wall  # the episodes' own time: positive and inside the program's wall time


def test_printed_line_matches_json(five_episodes):
    rc, out, out_json, _ = five_episodes
    res = json.loads(out_json.read_text())
    mean, ci, n, std = parse_return_line(out)
    assert float(mean) == pytest.approx(res["mean"], abs=0.006)
    assert float(ci) == pytest.approx(res["ci95"], abs=0.006)
    assert float(std) == pytest.approx(res["std"], abs=0.006)
    assert int(n) == 5
    assert f"checkpoint: {res['checkpoint']} (env CartPole-v1, step 200)" in out
    assert f"wrote {out_json}" in out


def test_json_written_atomically(five_episodes):
    _, _, out_json, _ = five_episodes
    assert sorted(os.listdir(out_json.parent)) == ["eval.json"]  # no temporary file left beside it
    assert out_json.read_text().endswith("}\n")


def test_directory_and_file_give_same_checkpoint(run_dir, five_episodes):
    _, _, out_json, _ = five_episodes
    by_dir = json.loads(out_json.read_text())
    by_file = evaluate_checkpoint(EvalOptions(checkpoint=ckpt_file(run_dir), episodes=5, device="cpu"))
    assert by_file["checkpoint"] == by_dir["checkpoint"]
    assert by_file["returns"] == by_dir["returns"] and by_file["lengths"] == by_dir["lengths"]
    older = evaluate_checkpoint(EvalOptions(checkpoint=ckpt_file(run_dir, 100), episodes=2, device="cpu"))
    assert older["step"] == 100 and older["checkpoint"] == os.path.abspath(ckpt_file(run_dir, 100))


def test_same_seed_is_deterministic_and_seed_option_is_used(run_dir):
    opts = dict(checkpoint=str(run_dir), episodes=4, device="cpu", seed=123)
    a = evaluate_checkpoint(EvalOptions(**opts))
    torch.manual_seed(999)
    np.random.seed(999)
    b = evaluate_checkpoint(EvalOptions(**opts))
    assert a["returns"] == b["returns"] and a["lengths"] == b["lengths"]
    assert a["seed"] == b["seed"] == 123
    c = evaluate_checkpoint(EvalOptions(**{**opts, "seed": 7, "num_envs": 2}))
    assert c["seed"] == 7 and len(c["returns"]) == 4


def test_eval_policy_sample_is_the_default_and_mode_is_a_switch(run_dir, tmp_path, capsys):
    rc, out, _ = run_main(capsys, f"--checkpoint={run_dir}", "--episodes=2", "--device=cpu", "--eval_policy=mode",
                          f"--json={tmp_path / 'm.json'}")
    assert rc == 0 and "2 episodes, mode policy, distractor none;" in out
    assert json.loads((tmp_path / "m.json").read_text())["policy"] == "mode"
    greedy = [evaluate_checkpoint(EvalOptions(checkpoint=str(run_dir), episodes=3, device="cpu", seed=5,
                                              eval_policy="mode"))["returns"] for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = evaluate_checkpoint(EvalOptions(checkpoint=str(run_dir), episodes=3, device="cpu", seed=5))
    assert sampled["policy"] == "sample"
    with pytest.raises(SystemExit) as e:
        main([f"--checkpoint={run_dir}", "--eval_policy=greedy"])
    assert e.value.code == 2 and "--eval_policy" in capsys.readouterr().err


def test_single_episode_has_no_interval(run_dir, tmp_path, capsys):
    out_json = tmp_path / "one.json"
    rc, out, _ = run_main(capsys, f"--checkpoint={run_dir}", "--episodes=1", f"--json={out_json}")
    assert rc == 0
    res = json.loads(out_json.read_text())
    assert res["ci95"] is None and res["std"] is None
    assert len(res["returns"]) == 1 and res["mean"] == res["returns"][0]
    mean, ci, n, std = parse_return_line(out)
    assert ci == "n/a" and std == "n/a" and n == "1"
    assert float(mean) == pytest.approx(res["mean"], abs=0.006)


def test_without_json_writes_nothing(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run_main(capsys, f"--checkpoint={run_dir}", "--episodes=2")
    assert rc == 0 and "wrote" not in out and os.listdir(tmp_path) == []
    parse_return_line(out)


@pytest.mark.slow
def test_program_as_module(run_dir, tmp_path):
    """``python -m dreamer_ext.evaluate`` end to end: exit status, output and JSON."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    out_json = tmp_path / "e.json"
    proc = subprocess.run([sys.executable, "-m", "dreamer_ext.evaluate", "--checkpoint", ckpt_file(run_dir),
                           "--episodes", "3", "--json", str(out_json)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out_json.read_text())
    assert len(res["returns"]) == 3 and res["step"] == 200
    mean, ci, n, _ = parse_return_line(proc.stdout)
    assert float(mean) == pytest.approx(res["mean"], abs=0.006) and n == "3"
    proc = subprocess.run([sys.executable, "-m", "dreamer_ext.evaluate", "--episodes=3"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_checkpoint_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--episodes=3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--checkpoint" in err and "Traceback" not in err


def test_zero_episodes_rejected(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main([f"--checkpoint={run_dir}", "--episodes=0"])
    assert e.value.code == 2
    assert "--episodes" in capsys.readouterr().err


def test_unknown_option_rejected(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main([f"--checkpoint={run_dir}", "--episode=3"])
    assert e.value.code == 2
    assert "--episode" in capsys.readouterr().err


def test_nonexistent_path(tmp_path, capsys):
    missing = tmp_path / "no" / "such.pt"
    rc, out, err = run_main(capsys, f"--checkpoint={missing}", "--episodes=2")
    assert rc == 1
    assert str(missing) in err and "Traceback" not in err and "return:" not in out


def test_json_path_that_cannot_be_written(run_dir, tmp_path, capsys):
    rc, out, err = run_main(capsys, f"--checkpoint={run_dir}", "--episodes=2", f"--json={tmp_path}")
    assert rc == 1 and "--json" in err and "cannot write" in err and "Traceback" not in err


def test_corrupt_checkpoint_message_gives_the_reason(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(range(256)) * 4)
    rc, _, err = run_main(capsys, f"--checkpoint={bad}", "--episodes=2")
    assert rc == 1 and "unreadable" in err and "file an issue" not in err


def test_directory_without_checkpoints(tmp_path, capsys):
    rc, _, err = run_main(capsys, f"--checkpoint={tmp_path}", "--episodes=2")
    assert rc == 1 and str(tmp_path) in err and "no checkpoint" in err


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "x.pt"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out_json = tmp_path / "out.json"
    rc, out, err = run_main(capsys, f"--checkpoint={bad}", "--episodes=2", f"--json={out_json}")
    assert rc == 1
    assert "unreadable" in err and str(bad) in err and "Traceback" not in err
    assert not out_json.exists()


def test_truncated_checkpoint(run_dir, tmp_path, capsys):
    data = open(ckpt_file(run_dir), "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    rc, _, err = run_main(capsys, f"--checkpoint={cut}", "--episodes=2")
    assert rc == 1 and "unreadable" in err


def test_not_a_dreamer_checkpoint(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, str(other))
    rc, _, err = run_main(capsys, f"--checkpoint={other}", "--episodes=2")
    assert rc == 1 and "not a dreamer_ext checkpoint" in err


# ------------------------------------------------------------------------------------------------ run_episodes
def episode_length(i, k):
    """Length of env i's k-th episode in the fake: distinct for every (i, k)."""
    return 3 + 4 * k + i if i != 0 else 5 + 4 * k


class FakeVecEnv:
    """Scripted stand-in for dreamer_ext.envs.VecEnv: env i's k-th episode lasts ``episode_length(i, k)`` steps,
    pays ``REWARD[i]`` per step, and shows ``image`` pixels = 10·k + t (env i, step t of episode k)."""

    REWARD = (0.5, 2.0, -1.0, 3.0)
    act_dim = 2

    def __init__(self, num_envs):
        self.num_envs = num_envs
        self.k = np.zeros(num_envs, np.int64)
        self.t = np.zeros(num_envs, np.int64)
        self.done = np.zeros(num_envs, bool)
        self.steps = 0
        self.resets = 0

    def _obs(self, reward, is_first, is_last):
        image = np.zeros((self.num_envs, 2, 2, 3), np.uint8)
        for i in range(self.num_envs):
            image[i] = 10 * self.k[i] + self.t[i]
        vector = np.stack([self.k, self.t], 1).astype(np.float32)
        return {"image": image, "vector": vector, "reward": reward.astype(np.float32), "is_first": is_first,
                "is_last": is_last, "is_terminal": is_last.copy()}

    def reset(self):
        self.resets += 1
        n = self.num_envs
        self.t[:] = 0
        return self._obs(np.zeros(n), np.ones(n, bool), np.zeros(n, bool))

    def step(self, action):
        assert action.shape == (self.num_envs, self.act_dim) and action.dtype == np.float32
        self.steps += 1
        n = self.num_envs
        is_first = self.done.copy()
        reward = np.zeros(n)
        for i in range(n):
            if is_first[i]:
                self.k[i] += 1
                self.t[i] = 0
            else:
                self.t[i] += 1
                reward[i] = self.REWARD[i]
        is_last = np.array([not is_first[i] and self.t[i] == episode_length(i, self.k[i]) for i in range(n)])
        self.done = is_last.copy()
        return self._obs(reward, is_first, is_last)


class FakeAgent:
    def __init__(self, act_dim):
        self.act_dim, self.modes, self.calls = act_dim, set(), 0

    def initial_carry(self, n):
        return {"count": torch.zeros(n)}

    def policy(self, obs, carry, sample=True):
        assert isinstance(obs["image"], torch.Tensor) and obs["image"].dtype == torch.uint8
        assert obs["is_first"].dtype == torch.bool
        self.modes.add(sample)
        self.calls += 1
        n = obs["image"].shape[0]
        return torch.zeros(n, self.act_dim), {"count": carry["count"] + 1}


def expected_episodes(num_envs, episodes):
    """(return, length) of the episodes each env must contribute: env i runs episodes i, i+n, ... of the total."""
    want = []
    for i in range(num_envs):
        for k in range(len(range(i, episodes, num_envs))):
            L = episode_length(i, k)
            want.append((FakeVecEnv.REWARD[i] * L, L))
    return want


@pytest.mark.parametrize("num_envs, episodes", [(3, 7), (1, 3), (4, 2), (2, 2)])
def test_run_episodes_quota_per_env(num_envs, episodes):
    env, agent = FakeVecEnv(num_envs), FakeAgent(FakeVecEnv.act_dim)
    out = run_episodes(agent, env, episodes, torch.device("cpu"))
    assert len(out["returns"]) == episodes and len(out["lengths"]) == episodes
    assert all(isinstance(r, float) for r in out["returns"]) and all(isinstance(x, int) for x in out["lengths"])
    got = sorted(zip(out["returns"], out["lengths"]))
    assert got == sorted(expected_episodes(num_envs, episodes))
    assert out["frames"] is None
    assert agent.modes == {True} and env.resets == 1  # the default evaluation samples, as the authors' does
    # it stops as soon as the last quota is met: the slowest env's last counted episode ends on the final step
    finish = max(sum(episode_length(i, k) + 1 for k in range(len(range(i, episodes, num_envs))))
                 for i in range(num_envs))
    assert env.steps == finish - 1


def test_run_episodes_completion_order():
    env = FakeVecEnv(2)
    out = run_episodes(FakeAgent(2), env, 4, torch.device("cpu"))
    # env 0: episodes of 5 and 9 steps end at steps 5 and 15; env 1: 4 and 8 steps end at steps 4 and 13
    assert out["lengths"] == [4, 5, 8, 9]
    assert out["returns"] == [8.0, 2.5, 16.0, 4.5]


@pytest.mark.parametrize("record, expected", [(100, [0, 1, 2, 3, 4, 5]), (3, [0, 1, 2]), (6, [0, 1, 2, 3, 4, 5]),
                                              (1, [0])])
def test_run_episodes_records_env0_first_episode(record, expected):
    out = run_episodes(FakeAgent(2), FakeVecEnv(3), 7, torch.device("cpu"), record=record, record_key="image")
    frames = out["frames"]
    assert frames.dtype == np.uint8 and frames.shape == (len(expected), 2, 2, 3)
    # env 0's first episode is 5 steps long: the reset frame (t=0), then t=1..5, last frame included, nothing after
    assert [int(f[0, 0, 0]) for f in frames] == expected
    assert (frames == frames[:, :1, :1, :1]).all()
    assert len(out["returns"]) == 7


def test_run_episodes_no_recording_without_key_or_record():
    assert run_episodes(FakeAgent(2), FakeVecEnv(2), 2, torch.device("cpu"), record=5)["frames"] is None
    assert run_episodes(FakeAgent(2), FakeVecEnv(2), 2, torch.device("cpu"), record=0,
                        record_key="image")["frames"] is None


def test_run_episodes_rejects_nonpositive_episodes():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="episodes"):
            run_episodes(FakeAgent(2), FakeVecEnv(2), bad, torch.device("cpu"))


def test_summarize():
    returns, lengths = [3.0, -1.0, 10.0, 4.0], [7, 2, 30, 9]
    s = summarize(returns, lengths)
    assert s["eval_return"] == pytest.approx(4.0)
    assert s["eval_return_min"] == -1.0 and s["eval_return_max"] == 10.0
    assert s["eval_length"] == pytest.approx(12.0)
    # the logged spread is the population std of the returns (ddof 0)
    assert s["eval_return_std"] == pytest.approx(np.sqrt(np.mean((np.array(returns) - 4.0) ** 2)))
    assert all(isinstance(v, float) for v in s.values())


def test_eval_options_validate():
    EvalOptions(checkpoint="x", episodes=1).validate()
    for kwargs, name in ((dict(), "checkpoint"), (dict(checkpoint="x", episodes=0), "episodes"),
                         (dict(checkpoint="x", num_envs=-1), "num_envs"), (dict(checkpoint="x", device="tpu"), "device"),
                         (dict(checkpoint="x", backend="fast"), "backend")):
        with pytest.raises(ValueError, match=name):
            EvalOptions(**kwargs).validate()


def test_eval_distractor_is_checked_and_named(run_dir, capsys):
    with pytest.raises(SystemExit) as e:
        main([f"--checkpoint={run_dir}", "--eval_distractor=fog:3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--eval_distractor" in err and "gauss:SIGMA" in err
    # a pixel distractor on a vector-observation run is a one-line run-time error naming the option
    rc, _, err = run_main(capsys, f"--checkpoint={run_dir}", "--eval_distractor=gauss:10", "--device=cpu")
    assert rc == 1 and err.strip().count("\n") == 0 and "--eval_distractor=gauss:10" in err and "image" in err
