"""End-to-end: the real training program in a subprocess, a few hundred env steps with a tiny model."""
import json
import math
import os
import re
import subprocess
import sys

import pytest

from dreamer_ext.config import config_from_dict

pytestmark = pytest.mark.slow  # every test here runs the real program in a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--preset=size1m", "--rssm.deter=64", "--rssm.hidden=32", "--encoder.mlp_units=32", "--decoder.mlp_units=32",
    "--heads.units=32", "--actor.units=32", "--critic.units=32", "--imag.horizon=8",
    "--batch_size=4", "--batch_length=16", "--train_ratio=4",  # 4/(4*16) = 1/16 updates per env step
    "--backend=reference", "--device=cpu", "--steps=300", "--eval_every=150", "--eval_episodes=1", "--log_every=100",
]


def run_train(tmp_path, env_id, *extra):
    logdir = tmp_path / "run"
    # one OpenMP thread: on a small shared CPU box, 2 spinning threads can be ~30x slower for these tiny models
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dreamer_ext.train", f"--env={env_id}", f"--logdir={logdir}", *TINY, *extra],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return logdir, proc.stdout


def check_run(logdir, out, env_id, backend="reference"):
    cfg = config_from_dict(json.loads((logdir / "config.json").read_text()))
    assert cfg.env == env_id and cfg.batch_size == 4 and cfg.rssm.deter == 64 and cfg.logdir == str(logdir)
    assert "device: cpu" in out and f"backend: {backend}" in out and re.search(r"params: .*total=[\d,]+", out)
    evals = re.findall(r"step=(\d+) eval_return=(-?[\d.]+) \(sample policy, 1 episodes\)", out)
    # an evaluation at every multiple of --eval_every (not only when an episode GIF is due: a skipped one at the
    # last step is hidden by finish()'s final evaluation, so image runs use an interval with a skippable middle)
    want = list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    assert [int(s) for s, _ in evals] == want and all(math.isfinite(float(r)) for _, r in evals), out[-3000:]
    # the final line reports the evaluation at the last step (here the loop's own), naming its policy
    final = re.search(r"final eval_return=(-?[\d.]+) \(mean of 1 eval episodes, sample policy\)", out)
    assert final and abs(float(final.group(1)) - float(evals[-1][1])) < 1e-2, out[-1500:]
    updates = int(re.search(r"done: steps=(\d+) updates=(\d+)", out).group(2))
    assert updates >= 10  # (300 - 64) / 16 ~ 15
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_return" in r for r in rows)
    train_rows = [r for r in rows if "train/loss/total" in r]
    assert train_rows, "no training metrics were logged"
    for r in rows:
        for k, v in r.items():
            assert math.isfinite(v), (k, v)
    assert max(r["step"] for r in rows) == 300


def test_train_cartpole_vector(tmp_path):
    logdir, out = run_train(tmp_path, "CartPole-v1")
    check_run(logdir, out, "CartPole-v1")
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss/rec_vector" in r for r in rows)
    episodes = {r["step"]: r["episode_return"] for r in rows if "episode_return" in r}
    assert episodes
    tb = {e.step: e.value for e in tensorboard_tags(logdir).Scalars("episode_return")}  # TensorBoard has them too
    assert tb.keys() == episodes.keys()


def test_train_with_the_default_compiled_kernels(tmp_path):
    """The default backend (the compiled C++ kernels on the CPU) trains end to end, so a kernel regression that only
    shows in training (a shape, stride or dtype the op tests do not sweep) fails here."""
    logdir, out = run_train(tmp_path, "CartPole-v1", "--backend=kernels")
    check_run(logdir, out, "CartPole-v1", backend="kernels")


def test_train_atari_image(tmp_path):
    logdir, out = run_train(tmp_path, "ALE/Asterix-v5", "--eval_every=100")  # evals at 100 (with a GIF), 200, 300
    check_run(logdir, out, "ALE/Asterix-v5")
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert any(k.startswith("train/loss/rec") for r in rows for k in r)


def tensorboard_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_holds_the_expected_tags(tmp_path):
    logdir, out = run_train(tmp_path, "ALE/Asterix-v5", "--media_every=150", "--video_frames=20")
    acc = tensorboard_tags(logdir)
    scalars = set(acc.Tags()["scalars"])
    for tag in ("train/loss/total", "train/loss/rec_image", "train/loss/rew", "train/loss/con",
                "train/loss/dyn", "train/loss/rep", "train/kl/dyn", "train/kl/rep", "train/ent/post",
                "train/actor/entropy", "train/loss/actor", "train/loss/critic", "train/ret/scale",
                "train/grad_norm/world_model", "train/grad_norm/actor", "train/grad_norm/critic",
                "eval_return", "updates_per_s", "steps_per_s", "skipped_updates"):
        assert tag in scalars, (tag, sorted(scalars))
    # a training episode of Asterix may outlast this short run: episode_return is in TensorBoard exactly when an
    # episode ended (the CartPole run checks the values)
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert ("episode_return" in scalars) == any("episode_return" in r for r in rows)
    # TensorBoard and metrics.jsonl agree on eval_return
    jsonl = {r["step"]: r["eval_return"] for r in rows if "eval_return" in r}
    tb = {e.step: e.value for e in acc.Scalars("eval_return")}
    assert tb.keys() == jsonl.keys() and all(abs(tb[k] - jsonl[k]) < 1e-3 * max(1.0, abs(jsonl[k])) for k in tb)
    images = set(acc.Tags()["images"])
    assert "recon/image" in images and "eval/episode" in images, images
    recon = acc.Images("recon/image")[-1]
    assert recon.width == 16 * 64 and recon.height % (3 * 64) == 0
    gif = acc.Images("eval/episode")[0].encoded_image_string
    assert gif.startswith(b"GIF89a")


def test_tensorboard_can_be_switched_off(tmp_path):
    logdir, _ = run_train(tmp_path, "CartPole-v1", "--tensorboard=false", "--steps=100", "--eval_every=0")
    assert not [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents")]
    assert (logdir / "metrics.jsonl").exists()
