"""Replay context (V2 ``replay_context: 1``): latents stored when acting, used as the start of a replayed window,
rewritten after every update, correct at episode starts, and saved/restored by checkpoints bit for bit (with only
the changed latent files written again)."""
import copy
import os
import types

import numpy as np
import pytest
import torch

from dreamer_ext import checkpoint as ckpt_mod
from dreamer_ext.agent import LATENT_KEYS, Agent
from dreamer_ext.checkpoint import Checkpointer, CheckpointError
from dreamer_ext.envs import make_env
from dreamer_ext.loop import Mean, to_torch
from dreamer_ext.replay import Replay
from dreamer_ext.dist import SINGLE
from dreamer_ext.train import TrainState, act_and_step, make_replay, train_once
from tiny_agent_config import random_batch, tiny_config, vector_spec

D, S, C = 32, 4, 4  # tiny_config's deter, stoch, classes


def context_batch(spec, B=3, T=5, seed=0):
    """A random batch of T + 1 steps with stored latents (h in [-1, 1] as float16, z as class indices)."""
    batch = random_batch(spec, B=B, T=T + 1, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    batch["latent_h"] = (torch.rand(B, T + 1, D, generator=g) * 2 - 1).half()
    batch["latent_z"] = torch.randint(0, C, (B, T + 1, S), generator=g, dtype=torch.uint8)
    batch["is_first"][:] = False
    return batch


def make_agent(seed=0, **overrides):
    torch.manual_seed(seed)
    return Agent(tiny_config(replay_context=1, **overrides), vector_spec())


def train_metrics(agent, batch, seed=5):
    """Metrics and latents of one update on a copy of ``agent`` (the agent itself is left untouched)."""
    a = copy.deepcopy(agent)
    torch.manual_seed(seed)
    return a.train_step(batch, return_latents=True)


# ------------------------------------------------------------------------------------------------------ the agent
def test_the_stored_latent_and_action_of_the_context_step_start_the_window():
    agent = make_agent()
    batch = context_batch(agent.spec)
    _, lat = train_metrics(agent, batch)
    assert lat["latent_h"].shape == (3, 5, D) and lat["latent_h"].dtype == torch.float16
    assert lat["latent_z"].shape == (3, 5, S) and lat["latent_z"].dtype == torch.uint8
    # by hand: h_1 = core(h_0, z_0, a_0) from the stored state of step 0 and the action taken there
    rssm = agent.wm.rssm
    start = rssm.unpack(batch["latent_h"][:, 0], batch["latent_z"][:, 0])
    with torch.no_grad(), agent.autocast():
        h1 = rssm.core(start["h"], start["z"], batch["action"][:, 0].float())
    torch.testing.assert_close(lat["latent_h"][:, 0].float(), h1.half().float(), atol=0, rtol=0)
    # from zeros instead (replay_context=0 on the same T steps) the first state differs
    zero = copy.deepcopy(agent)
    zero.config = tiny_config(replay_context=0)
    torch.manual_seed(5)
    _, lat0 = zero.train_step({k: v[:, 1:] for k, v in batch.items() if k not in LATENT_KEYS}, return_latents=True)
    assert not torch.equal(lat0["latent_h"][:, 0], lat["latent_h"][:, 0])


def test_only_the_context_step_latent_is_read():
    agent = make_agent()
    batch = context_batch(agent.spec)
    m1, l1 = train_metrics(agent, batch)
    other = {k: v.clone() for k, v in batch.items()}
    other["latent_h"][:, 1:] = 0.5           # the trained steps' stored latents are outputs, not inputs
    other["latent_z"][:, 1:] = 1
    m2, l2 = train_metrics(agent, other)
    assert m1 == m2 and all(torch.equal(l1[k], l2[k]) for k in l1)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["latent_h"][:, 0] = -changed["latent_h"][:, 0]
    m3, _ = train_metrics(agent, changed)
    assert m3["loss/total"] != m1["loss/total"]


def test_an_episode_start_right_after_the_context_step_ignores_it():
    agent = make_agent()
    batch = context_batch(agent.spec)
    batch["is_first"][:, 1] = True           # the window's first trained step starts an episode
    m1, l1 = train_metrics(agent, batch)
    other = {k: v.clone() for k, v in batch.items()}
    other["latent_h"][:, 0] = -other["latent_h"][:, 0]
    other["latent_z"][:, 0] = (other["latent_z"][:, 0] + 1) % C
    other["action"][:, 0] = 1.0 - other["action"][:, 0]
    m2, l2 = train_metrics(agent, other)
    assert m1 == m2 and all(torch.equal(l1[k], l2[k]) for k in l1)


def test_context_batches_are_checked():
    agent = make_agent()
    batch = context_batch(agent.spec)
    with pytest.raises(ValueError, match=r"missing keys \['latent_h', 'latent_z'\].*replay_context"):
        agent.train_step({k: v for k, v in batch.items() if k not in LATENT_KEYS})
    with pytest.raises(ValueError, match="replay_context=1 needs windows of more than 1 steps"):
        agent.train_step({k: v[:, :1] for k, v in batch.items()})
    with pytest.raises(ValueError, match=r"h, z: expected \[..., 32\]"):
        agent.train_step({**batch, "latent_h": batch["latent_h"][..., :8]})


def test_pack_unpack_round_trip():
    agent = make_agent()
    rssm = agent.wm.rssm
    z = torch.nn.functional.one_hot(torch.randint(0, C, (7, S)), C).float()
    h = torch.rand(7, D) * 2 - 1
    packed = rssm.pack({"h": h, "z": z})
    back = rssm.unpack(packed["h"], packed["z"])
    assert torch.equal(back["z"], z)
    assert (back["h"] - h).abs().max() <= 2 ** -11  # float16 in [-1, 1]


# ------------------------------------------------------------------------------------------------------ the replay
def filled(capacity=1000, length=4, chunk_size=8, steps=30, mutable=("lat",)):
    r = Replay(capacity, length, chunk_size=chunk_size, online=False, mutable=mutable)
    for t in range(steps):
        r.add({"x": np.float32(t), "lat": np.full(2, t, np.float16)})
    return r


def test_update_rewrites_only_the_mutable_entries_of_the_given_steps():
    r = filled()
    windows = np.array([[0, 3], [0, 10]])
    versions = {c.uid: c.version for c in r.chunks(full_only=False)}
    n = r.update(windows, 1, {"lat": np.full((2, 3, 2), -1, np.float16)})
    assert n == 6
    got = r.read(windows)
    assert np.array_equal(got["lat"][:, 0, 0], [3, 10])       # the context step keeps its stored latent
    assert (got["lat"][:, 1:] == -1).all()
    assert np.array_equal(got["x"], [[3, 4, 5, 6], [10, 11, 12, 13]])  # immutable entries untouched
    touched = {c.uid for c in r.chunks(full_only=False) if c.version != versions[c.uid]}
    assert touched == {0, 1}                                  # positions 4..6 and 11..13: chunks 0 and 1 only
    with pytest.raises(ValueError, match=r"values: keys \['x'\] are not mutable"):
        r.update(windows, 1, {"x": np.zeros((2, 3), np.float32)})
    with pytest.raises(ValueError, match="offset"):
        r.update(windows, 2, {"lat": np.zeros((2, 3, 2), np.float16)})
    with pytest.raises(ValueError, match=r"values\['lat'\]: expected shape"):
        r.update(windows, 1, {"lat": np.zeros((3, 3, 2), np.float16)})
    with pytest.raises(ValueError, match="windows"):
        r.update(np.array([0, 3]), 1, {"lat": np.zeros((1, 3, 2), np.float16)})


def test_update_skips_steps_evicted_since_sampling():
    r = filled(capacity=12, length=4, steps=12)
    windows = r.sample_windows(1) * 0 + np.array([[0, 0]])
    for t in range(12, 14):  # evicts positions 0 and 1
        r.add({"x": np.float32(t), "lat": np.full(2, t, np.float16)})
    assert r.update(windows, 1, {"lat": np.full((1, 3, 2), -1, np.float16)}) == 2  # positions 2 and 3 only
    assert np.array_equal(r.read(np.array([[0, 2]]))["lat"][0, :2, 0], [-1, -1])
    with pytest.raises(ValueError, match="not a stored window"):
        r.read(windows)


def test_sample_is_read_of_sample_windows():
    a, b = filled(), filled()
    x = a.sample(6)
    y = b.read(b.sample_windows(6))
    assert all(np.array_equal(x[k], y[k]) for k in x)


def test_the_mutable_keys_must_come_with_the_first_step():
    r = Replay(100, 4, mutable=("lat",))
    with pytest.raises(ValueError, match=r"mutable keys \['lat'\]"):
        r.add({"x": np.float32(0)})


# ------------------------------------------------------------------------------------------------------ the loop
def small_run(seed=0):
    cfg = tiny_config(replay_context=1, batch_size=2, batch_length=4, env="CartPole-v1")
    torch.manual_seed(seed)
    envs = make_env("CartPole-v1", seed, 1)
    agent = Agent(cfg, envs.spec)
    return types.SimpleNamespace(cfg=cfg, device=agent.device, agent=agent, replay=make_replay(cfg), envs=envs,
                                 dist=SINGLE, st=TrainState())


def test_acting_stores_the_posterior_of_each_step_and_updates_rewrite_them():
    run = small_run()
    obs, carry = run.envs.reset(), run.agent.initial_carry(1)
    states = []
    for _ in range(40):
        obs, carry = act_and_step(run, obs, carry)
        states.append(run.agent.latents(carry))
    stored = run.replay.read(np.array([[0, 0]]))  # the first window: steps 0..4 (batch_length 4 + context 1)
    assert stored["latent_h"].shape == (1, 5, D)
    for t in range(5):
        assert np.array_equal(stored["latent_h"][0, t], states[t]["latent_h"][0].numpy())
        assert np.array_equal(stored["latent_z"][0, t], states[t]["latent_z"][0].numpy())
    # one update through the loop's own step: the trained steps now hold the posteriors it computed
    seen = {}
    real = run.agent.train_step

    def spy(batch, return_latents=False):
        out = real(batch, return_latents=return_latents)
        seen["batch"], seen["latents"] = batch, out[1]
        return out

    run.agent.train_step = spy
    train_once(run, Mean())
    batch, lat = seen["batch"], seen["latents"]
    assert lat is not None and lat["latent_h"].shape == (2, 4, D)
    # find the windows by their (unique) observations and compare what the replay holds now
    for b in range(2):
        first_obs = batch["vector"][b, 0].numpy()
        start = next(s for s in range(40 - 4) if np.array_equal(
            run.replay.read(np.array([[0, s]]))["vector"][0, 0], first_obs))
        now = run.replay.read(np.array([[0, start]]))
        assert np.array_equal(now["latent_h"][0, 0], batch["latent_h"][b, 0].numpy())  # context step untouched
        assert np.array_equal(now["latent_h"][0, 1:], lat["latent_h"][b].numpy())
        assert np.array_equal(now["latent_z"][0, 1:], lat["latent_z"][b].numpy())
        assert not np.array_equal(now["latent_h"][0, 1:], batch["latent_h"][b, 1:].numpy())


def test_a_skipped_update_leaves_the_stored_latents():
    agent = make_agent()
    batch = context_batch(agent.spec)
    batch["reward"][0, 2] = float("nan")
    m, lat = agent.train_step(batch, return_latents=True)
    assert m["opt/skipped"] == 1.0 and lat is None


# ------------------------------------------------------------------------------------------------------ checkpoints
def replay_with_latents(steps=70, chunk_size=16):
    r = Replay(10_000, 5, chunk_size=chunk_size, online=True, mutable=LATENT_KEYS)
    rng = np.random.default_rng(0)
    for t in range(steps):
        r.add({"vector": rng.normal(size=5).astype(np.float32), "reward": np.float32(t), "is_first": t % 23 == 0,
               "is_last": t % 23 == 22, "is_terminal": False, "action": np.zeros(3, np.float32),
               "latent_h": rng.uniform(-1, 1, size=D).astype(np.float16),
               "latent_z": rng.integers(0, C, size=S).astype(np.uint8)})
    return r


def payload(agent=None):
    return {"config": {}, "spec": {}, "agent": agent.checkpoint_state() if agent else {}, "train_state": {},
            "rng": ckpt_mod.rng_state(), "logs": {"metrics_offset": 0}}


def restored(tmp_path, like):
    r = Replay(like.capacity, like.length, chunk_size=like.chunk_size, online=like.online, mutable=like.mutable)
    Checkpointer(str(tmp_path), keep=2).load(None, r)
    return r


def assert_same(a, b):
    assert a.state_dict() == b.state_dict()
    for x, y in zip(a.chunks(full_only=False), b.chunks(full_only=False)):
        assert x.uid == y.uid and x.version == y.version
        for k in x.data:
            assert np.array_equal(x.data[k][:x.count], y.data[k][:y.count]), k


def test_latents_are_saved_and_restored_bit_for_bit_writing_only_changed_chunks(tmp_path, monkeypatch):
    agent = make_agent()
    chunk_writes, latent_writes = [], []
    real_c, real_l = ckpt_mod._write_chunk_file, ckpt_mod._write_latent_file
    monkeypatch.setattr(ckpt_mod, "_write_chunk_file", lambda p, c, *a: (chunk_writes.append(c.uid), real_c(p, c, *a)))
    monkeypatch.setattr(ckpt_mod, "_write_latent_file", lambda p, c, *a: (latent_writes.append(c.uid), real_l(p, c, *a)))
    doc = payload(agent)
    r = replay_with_latents()                 # chunks 0..3 full, 4 partial
    ck = Checkpointer(str(tmp_path), keep=2)
    ck.save(70, doc, r)
    assert chunk_writes == latent_writes == [0, 1, 2, 3]
    assert_same(r, restored(tmp_path, r))
    # an update touching chunk 1 only (positions 20..24): one new latent file, no chunk file
    r.update(np.array([[0, 19]]), 1, {"latent_h": np.full((1, 4, D), 0.25, np.float16),
                                      "latent_z": np.full((1, 4, S), 3, np.uint8)})
    chunk_writes.clear(), latent_writes.clear()
    ck.save(71, doc, r)
    assert chunk_writes == [] and latent_writes == [1]
    back = restored(tmp_path, r)
    assert_same(r, back)
    assert (back.read(np.array([[0, 19]]))["latent_h"][0, 1:] == 0.25).all()
    # the superseded latent file of chunk 1 is still named by the older kept checkpoint; a third save prunes it
    def names():
        return sorted(n for n in os.listdir(ck.replay_dir) if n.startswith("latent-00000001"))

    assert len(names()) == 2
    ck.save(72, doc, r)
    assert len(names()) == 1


def test_a_missing_latent_file_is_a_clear_error(tmp_path):
    r = replay_with_latents()
    ck = Checkpointer(str(tmp_path), keep=2)
    ck.save(70, payload(), r)
    c = r.chunks()[2]
    os.unlink(ck.latent_path(c.uid, c.version))
    with pytest.raises(CheckpointError, match="replay latent file .* is missing"):
        restored(tmp_path, r)


def test_a_replay_without_latents_does_not_load_into_one_with_them(tmp_path):
    plain = Replay(10_000, 5, chunk_size=16)
    for t in range(40):
        plain.add({"vector": np.zeros(5, np.float32), "reward": np.float32(t), "is_first": False,
                   "action": np.zeros(3, np.float32)})
    Checkpointer(str(tmp_path)).save(40, payload(), plain)
    with pytest.raises(CheckpointError, match="mutable"):
        restored(tmp_path, replay_with_latents())


def test_batches_from_the_replay_train_the_agent():
    agent = make_agent()
    r = replay_with_latents()
    windows = r.sample_windows(2)
    m, lat = agent.train_step(to_torch(r.read(windows), agent.device), return_latents=True)
    assert m["opt/skipped"] == 0.0 and set(lat) == set(LATENT_KEYS)
    assert r.update(windows, 1, {k: v.numpy() for k, v in lat.items()}) == 2 * 4
