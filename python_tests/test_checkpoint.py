"""Checkpoints: bitwise round trip (agent, optimiser, replay), incremental replay chunks, pruning, corrupt and
incompatible checkpoints, and resume after SIGKILL through the real command line."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from dreamer_ext import checkpoint as ckpt_mod
from dreamer_ext.agent import LATENT_KEYS, Agent
from dreamer_ext.checkpoint import (Checkpointer, CheckpointError, checkpoint_config, find_checkpoint, list_checkpoints,
                                    load_checkpoint)
from dreamer_ext.replay import Replay
from dreamer_ext.train import make_replay
from test_train_smoke import TINY as SMOKE_TINY
from tiny_agent_config import random_batch, tiny_config, vector_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the smoke test's tiny model; later options override its step/eval/log settings
TINY = [*SMOKE_TINY, "--eval_every=0", "--log_every=50", "--replay_capacity=100000"]


def filled_replay(steps=150, workers=2, capacity=200, chunk_size=16, seed=0):
    """A replay with several workers, full and partial chunks, evictions and a non-empty online queue."""
    r = Replay(capacity, 8, chunk_size=chunk_size, online=True, seed=seed)
    rng = np.random.default_rng(seed)
    for t in range(steps):
        r.add_batch({
            "vector": rng.normal(size=(workers, 5)).astype(np.float32),
            "image": rng.integers(0, 256, size=(workers, 4, 4, 3), dtype=np.uint8),
            "reward": rng.normal(size=workers).astype(np.float32),
            "is_first": np.array([t % 37 == 0] * workers),
            "action": rng.normal(size=(workers, 3)).astype(np.float32),
        })
    return r


def payload_for(agent, step):
    return {"config": {}, "spec": {}, "agent": agent.checkpoint_state(), "train_state": {"step": step},
            "rng": ckpt_mod.rng_state(), "logs": {"metrics_offset": 0}}


def trained_agent(seed=0):
    torch.manual_seed(seed)
    spec = vector_spec()
    agent = Agent(tiny_config(), spec)
    for s in range(2):
        agent.train_step(random_batch(spec, B=2, T=4, seed=s))
    return agent, spec


def assert_replays_equal(a: Replay, b: Replay):
    assert a.state_dict() == b.state_dict()
    ca, cb = a.chunks(full_only=False), b.chunks(full_only=False)
    assert [c.uid for c in ca] == [c.uid for c in cb]
    for x, y in zip(ca, cb):
        assert (x.worker, x.start, x.count) == (y.worker, y.start, y.count)
        assert np.array_equal(x.time[:x.count], y.time[:y.count])
        for k in x.data:
            assert x.data[k].dtype == y.data[k].dtype
            assert np.array_equal(x.data[k][:x.count], y.data[k][:y.count]), k


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_is_bitwise(tmp_path):
    agent, spec = trained_agent()
    replay = filled_replay()
    assert replay.evicted > 0 and len(replay.online_queue) > 0
    ck = Checkpointer(str(tmp_path), keep=2)
    path = ck.save(150, payload_for(agent, 150), replay)
    assert path == find_checkpoint(str(tmp_path))

    torch.manual_seed(123)  # a different init: the load must overwrite everything
    agent2 = Agent(tiny_config(), spec)
    replay2 = Replay(200, 8, chunk_size=16, online=True, seed=99)
    payload = Checkpointer(str(tmp_path), keep=2).load(None, replay2)
    agent2.load_checkpoint_state(payload["agent"])

    for (k, v1), (k2, v2) in zip(agent.state_dict().items(), agent2.state_dict().items()):
        assert k == k2 and torch.equal(v1, v2), k
    o1, o2 = agent.opt.state_dict(), agent2.opt.state_dict()
    assert o1["steps"] == o2["steps"] == 2
    s1, s2 = o1["opts"]["all"]["state"], o2["opts"]["all"]["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        for name in ("m", "v"):
            assert torch.equal(s1[i][name], s2[i][name])
    assert_replays_equal(replay, replay2)
    # same RNG state and online queue: the next batches are identical
    b1, b2 = replay.sample(5), replay2.sample(5)
    for k in b1:
        assert np.array_equal(b1[k], b2[k]), k
    # both continue identically (same optimiser step count, same buffers)
    batch = random_batch(spec, B=2, T=4, seed=7)
    torch.manual_seed(5)
    m1 = agent.train_step(batch)
    torch.manual_seed(5)
    m2 = agent2.train_step(batch)
    assert m1 == m2


def test_rng_state_round_trip():
    state = ckpt_mod.rng_state()
    a = (np.random.rand(3), torch.rand(3), __import__("random").random())
    np.random.rand(7), torch.rand(7)
    ckpt_mod.set_rng_state(state)
    b = (np.random.rand(3), torch.rand(3), __import__("random").random())
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_replay_saved_incrementally(tmp_path, monkeypatch):
    written = []
    real = ckpt_mod._write_chunk_file
    monkeypatch.setattr(ckpt_mod, "_write_chunk_file", lambda path, c, *a: (written.append(c.uid), real(path, c, *a)))
    agent, _ = trained_agent()
    replay = Replay(10_000, 8, chunk_size=16, online=True)
    rng = np.random.default_rng(0)

    def add(n):
        for _ in range(n):
            replay.add({"vector": rng.normal(size=5).astype(np.float32), "reward": np.float32(1.0),
                        "is_first": False, "action": np.zeros(3, np.float32)})

    ck = Checkpointer(str(tmp_path), keep=5)
    add(40)  # chunks 0, 1 full; 2 partial (kept inside the checkpoint)
    ck.save(40, payload_for(agent, 40), replay)
    assert written == [0, 1]
    add(30)  # chunk 2 and 3 fill
    ck.save(70, payload_for(agent, 70), replay)
    assert written == [0, 1, 2, 3]  # only the new ones
    ck.save(70, payload_for(agent, 70), replay)
    assert written == [0, 1, 2, 3]
    files = sorted(os.listdir(tmp_path / "replay"))
    assert files == [f"chunk-{u:08d}.npz" for u in range(4)]
    # the older checkpoint still restores its own (shorter) replay
    r_old = Replay(10_000, 8, chunk_size=16, online=True)
    Checkpointer(str(tmp_path), keep=5).load(str(tmp_path / "checkpoints" / "ckpt-000000000040.pt"), r_old)
    assert len(r_old) == 40 and r_old.inserted == 40


def test_pruning_keeps_newest_and_their_chunks(tmp_path):
    agent, _ = trained_agent()
    replay = Replay(48, 8, chunk_size=16, online=False)
    ck = Checkpointer(str(tmp_path), keep=2)
    for step in range(1, 7):
        for _ in range(32):
            replay.add({"vector": np.full(5, step, np.float32), "reward": np.float32(0), "is_first": False,
                        "action": np.zeros(3, np.float32)})
        ck.save(step * 32, payload_for(agent, step * 32), replay)
    steps = [s for s, _ in list_checkpoints(str(tmp_path))]
    assert steps == [160, 192]
    chunk_uids = sorted(int(n[6:14]) for n in os.listdir(tmp_path / "replay"))
    needed = set()
    for _, p in list_checkpoints(str(tmp_path)):
        needed |= set(load_checkpoint(p)["replay"]["chunks"])
    assert set(chunk_uids) == needed  # nothing stale, nothing missing
    for _, p in list_checkpoints(str(tmp_path)):  # both kept checkpoints still load completely
        r = Replay(48, 8, chunk_size=16, online=False)
        Checkpointer(str(tmp_path), keep=2).load(p, r)
        assert len(r) == 48


# ------------------------------------------------------------------------------------------------ bad checkpoints
def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path):
    agent, _ = trained_agent()
    ck = Checkpointer(str(tmp_path), keep=3)
    path = ck.save(10, payload_for(agent, 10), filled_replay(steps=20))
    data = open(path, "rb").read()
    # truncated (e.g. a disk that filled up)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable.*truncated, corrupt"):
        load_checkpoint(str(tmp_path))
    # random bytes
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)
    # a torch file that is not ours
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a dreamer_ext checkpoint"):
        load_checkpoint(path)
    # a future format version
    torch.save({"format": ckpt_mod.FORMAT, "version": ckpt_mod.FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="neither a checkpoint file nor a run directory"):
        load_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(str(tmp_path / "replay"))


def test_missing_or_mismatched_replay_chunk(tmp_path):
    agent, _ = trained_agent()
    replay = filled_replay(steps=100, capacity=10_000)
    ck = Checkpointer(str(tmp_path), keep=1)
    ck.save(100, payload_for(agent, 100), replay)
    victim = sorted(os.listdir(tmp_path / "replay"))[0]
    os.rename(tmp_path / "replay" / victim, tmp_path / "victim.npz")
    with pytest.raises(CheckpointError, match="missing"):
        Checkpointer(str(tmp_path)).load(None, Replay(10_000, 8, chunk_size=16))
    os.rename(tmp_path / "victim.npz", tmp_path / "replay" / victim)
    with pytest.raises(CheckpointError, match="replay does not match"):  # other settings than the saved replay
        Checkpointer(str(tmp_path)).load(None, Replay(10_000, 16, chunk_size=16))


def test_replay_load_state_dict_rejects_gaps():
    r = filled_replay(steps=100, capacity=10_000)
    chunks = r.chunks(full_only=False)
    with pytest.raises(ValueError, match="gap|no chunk|first chunk|last chunk"):
        Replay(10_000, 8, chunk_size=16).load_state_dict(r.state_dict(), chunks[1:])
    with pytest.raises(ValueError, match="capacity"):
        Replay(999, 8, chunk_size=16).load_state_dict(r.state_dict(), chunks)


# ------------------------------------------------------------------------------------------------ real CLI
def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def _train(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "dreamer_ext.train", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _replay_of(path):
    """The replay of a checkpoint, made as the run made it (from its saved config)."""
    r = make_replay(checkpoint_config(load_checkpoint(path)))
    Checkpointer(os.path.dirname(os.path.dirname(path))).load(path, r)
    return r


@pytest.mark.slow
def test_sigkill_then_resume_loses_nothing_before_the_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    args = ["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--checkpoint_every=400", "--checkpoint_keep=3",
            "--log_every=20"]
    proc = subprocess.Popen([sys.executable, "-m", "dreamer_ext.train", *args, "--steps=1000000"], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # kill it mid-training, after a checkpoint and after it has logged past that checkpoint
        deadline = time.time() + 240
        while time.time() < deadline:
            found = list_checkpoints(str(logdir))
            if found and found[-1][0] >= 400:
                offset = load_checkpoint(found[-1][1])["logs"]["metrics_offset"]
                if os.path.getsize(logdir / "metrics.jsonl") > offset + 500:
                    break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint at step >= 400 within 240 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    last_step, last_path = list_checkpoints(str(logdir))[-1]
    before = load_checkpoint(last_path)
    replay_before = _replay_of(last_path)
    assert before["step"] == last_step and replay_before.inserted == last_step
    offset = before["logs"]["metrics_offset"]
    assert os.path.getsize(logdir / "metrics.jsonl") > offset  # the killed run logged past its last checkpoint

    target = last_step + 200
    res = _train([f"--logdir={logdir}", "--resume", f"--steps={target}"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"resume: {last_path} (step {last_step})" in res.stdout
    assert "changed options: steps: 1000000 -> " + str(target) in res.stdout

    after_path = find_checkpoint(str(logdir))
    after = load_checkpoint(after_path)
    assert after["step"] == target and after["train_state"]["resumes"] == 1
    assert after["train_state"]["updates"] > before["train_state"]["updates"]
    # nothing earlier lost: every step stored before the kill's checkpoint is still there, bit for bit (the stored
    # latents excepted: updates after the resume rewrite them)
    assert replay_before.mutable == LATENT_KEYS
    replay_after = _replay_of(after_path)
    assert replay_after.inserted == target
    old = {(c.worker, c.start): c for c in replay_before.chunks(full_only=False)}
    for c in replay_after.chunks(full_only=False):
        if (c.worker, c.start) in old:
            o = old[(c.worker, c.start)]
            for k in o.data:
                if k not in LATENT_KEYS:
                    assert np.array_equal(o.data[k][:o.count], c.data[k][:o.count]), k
    assert sum(c.count for c in replay_after.chunks(full_only=False)) >= target
    # the log holds no rows of the killed run after its checkpoint: steps never go backwards
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and steps[-1] == target
    log_steps = [r["step"] for r in rows if "updates" in r]  # one periodic log row per log step
    assert len(log_steps) == len(set(log_steps))
    cfg = json.loads((logdir / "config.json").read_text())
    assert cfg["steps"] == target and cfg["resume"] is True


@pytest.mark.slow
def test_cli_refuses_to_clobber_and_reports_bad_checkpoints(tmp_path):
    logdir = tmp_path / "run"
    base = ["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--checkpoint_every=0"]
    res = _train([*base, "--steps=100"])
    assert res.returncode == 0, res.stderr[-3000:]
    # a second run into the same directory without --resume is refused
    res = _train([*base, "--steps=100"])
    assert res.returncode == 2 and "pass --resume" in res.stderr and "Traceback" not in res.stderr
    # incompatible model
    res = _train([f"--logdir={logdir}", "--resume", "--steps=200", "--rssm.deter=128"])
    assert res.returncode == 1 and "does not fit the model" in res.stderr and "Traceback" not in res.stderr
    # a preset change is refused
    res = _train([f"--logdir={logdir}", "--resume", "--preset=size12m"])
    assert res.returncode == 2 and "--preset" in res.stderr
    # corrupt newest checkpoint
    path = find_checkpoint(str(logdir))
    with open(path, "r+b") as f:
        f.truncate(100)
    res = _train([f"--logdir={logdir}", "--resume", "--steps=200"])
    assert res.returncode == 1 and "unreadable" in res.stderr and path in res.stderr
    assert "Traceback" not in res.stderr
    # --resume without --logdir
    res = _train(["--resume"])
    assert res.returncode == 2 and "--resume" in res.stderr


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resumes(tmp_path):
    logdir = tmp_path / "run"
    args = ["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--checkpoint_every=0", "--steps=1000000"]
    proc = subprocess.Popen([sys.executable, "-m", "dreamer_ext.train", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stdout:  # the readiness line comes after set-up, when the loop starts
            seen.append(line)
            if line.startswith("start: step 0 of 1000000"):
                break
        else:
            pytest.fail("no readiness line: " + "".join(seen)[-2000:] + proc.stderr.read()[-2000:])
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in out and "Traceback" not in err
    step = list_checkpoints(str(logdir))[-1][0]
    assert 0 <= step < 1_000_000
    res = _train([f"--logdir={logdir}", "--resume", f"--steps={step + 50}"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(str(logdir))["step"] == step + 50


def test_sigterm_during_set_up_still_ends_in_a_checkpoint(tmp_path, monkeypatch, capsys):
    """The stop handler is installed before the slow set-up: a SIGTERM that arrives while the environments and the
    agent are being built is kept, and the run stops at its first iteration with a checkpoint (exit 0)."""
    from dreamer_ext import train as train_mod

    real_setup = train_mod.setup

    def setup_then_signal(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # delivered to the handler right away (main thread)
        return real_setup(*args, **kwargs)

    caught_outside = []

    def outside(signum, frame):  # would see the signal if the program had no handler yet (instead of dying)
        caught_outside.append(signum)

    monkeypatch.setattr(train_mod, "setup", setup_then_signal)
    old = signal.signal(signal.SIGTERM, outside)
    try:
        logdir = tmp_path / "run"
        rc = train_mod.main(["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--steps=1000"])
        assert signal.getsignal(signal.SIGTERM) is outside  # the program's handler is removed again
    finally:
        signal.signal(signal.SIGTERM, old)
    out = capsys.readouterr().out
    assert not caught_outside
    assert rc == 0 and "stopped by SIGTERM at step 0" in out
    assert [s for s, _ in list_checkpoints(str(logdir))] == [0]


def test_resume_uses_the_current_optimiser_hyperparameters():
    agent, spec = trained_agent()
    state = agent.checkpoint_state()
    agent2 = Agent(tiny_config(optim={"lr": 1e-3, "eps": 1e-8}), spec)
    agent2.load_checkpoint_state(state)
    group = agent2.opt.opts["all"].param_groups[0]
    assert group["lr"] == 1e-3 and group["eps"] == 1e-8
    assert group["step"] == agent.opt.opts["all"].param_groups[0]["step"] == 2  # the moments' age is kept
    adam = Agent(tiny_config(optim={"kind": "adam"}), spec)
    adam.train_step(random_batch(spec, B=2, T=4))
    adam2 = Agent(tiny_config(optim={"kind": "adam", "model_lr": 3e-3}), spec)
    adam2.load_checkpoint_state(adam.checkpoint_state())
    assert adam2.opt.opts["world_model"].param_groups[0]["base_lr"] == 3e-3


@pytest.mark.slow
def test_resume_follows_new_intervals_and_extends_the_run(tmp_path):
    logdir = tmp_path / "run"
    res = _train(["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--checkpoint_every=0", "--steps=100",
                  "--checkpoint_keep=10"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(str(logdir))] == [100]
    res = _train([f"--logdir={logdir}", "--resume", "--steps=300", "--checkpoint_every=50"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert [s for s, _ in list_checkpoints(str(logdir))] == [100, 150, 200, 250, 300]


@pytest.mark.slow
def test_fresh_start_discards_logs_of_a_run_without_checkpoints(tmp_path):
    logdir = tmp_path / "run"
    logdir.mkdir()
    (logdir / "metrics.jsonl").write_text('{"step": 999999, "time": 0, "episode_return": 1}\n')
    res = _train(["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--steps=100", "--resume"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "starting a new run" in res.stdout and "discarded" in res.stdout
    steps = [json.loads(line)["step"] for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert steps and 999999 not in steps


@pytest.mark.slow
def test_a_locked_run_directory_is_refused(tmp_path):
    logdir = tmp_path / "run"
    lock = ckpt_mod.RunLock(str(logdir))
    try:
        res = _train(["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--steps=100"])
    finally:
        lock.release()
    assert res.returncode == 1 and "in use by another process" in res.stderr and str(os.getpid()) in res.stderr
    res = _train(["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--steps=100"])  # free again
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_lost_metrics_file_warns_instead_of_failing(tmp_path):
    logdir = tmp_path / "run"
    res = _train(["--env=CartPole-v1", f"--logdir={logdir}", *TINY, "--steps=100"])
    assert res.returncode == 0, res.stderr[-3000:]
    os.unlink(logdir / "metrics.jsonl")
    res = _train([f"--logdir={logdir}", "--resume", "--steps=150"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "shorter than when the checkpoint was saved" in res.stdout


def test_in_process_train_and_evaluate_restore_the_ops_backend(tmp_path, capsys):
    from dreamer_ext import ops
    from dreamer_ext.evaluate import main as evaluate_main
    from dreamer_ext.train import main as train_main

    assert ops.get_backend() == "kernels"
    assert train_main(["--env=CartPole-v1", f"--logdir={tmp_path / 'run'}", *TINY, "--steps=80"]) == 0  # reference
    assert ops.get_backend() == "kernels"
    assert evaluate_main([f"--checkpoint={tmp_path / 'run'}", "--episodes=1", "--backend=reference"]) == 0
    assert ops.get_backend() == "kernels"
