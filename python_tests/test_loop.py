"""Loop helpers shared by the programs: schedules, metric means, episode bookkeeping, the run-time projection and
the once-printed note for CPU runs that would take too long."""
import math

import numpy as np
import pytest

from dreamer_ext import loop
from dreamer_ext.config import make_config
from dreamer_ext.loop import Episodes, Every, Mean, Projection, format_duration
from dreamer_ext.train import practical_scale_note


def test_every_fires_once_per_multiple_and_follows_the_start():
    e = Every(100)
    fired = [s for s in range(0, 450, 10) if e.due(s)]
    assert fired == [100, 200, 300, 400]
    e = Every(100)
    assert [s for s in (50, 250, 260, 300) if e.due(s)] == [250, 300]  # 100 and 200 passed at once: one firing
    resumed = Every(100, after=230)  # a resumed run: the next multiple after its step
    assert not resumed.due(230) and not resumed.due(299) and resumed.due(300)
    assert not any(Every(0).due(s) for s in range(0, 10_000, 100))


def test_every_first_and_postponed_firing():
    e = Every(100, after=0, first=0)
    assert not e.due(10, when=False) and e.due(20)  # postponed until allowed, then fires
    assert not e.due(50) and e.due(100)
    with pytest.raises(ValueError, match="every"):
        Every(-1)


def test_mean_averages_each_key_over_its_own_values_and_restarts():
    m = Mean()
    m.add({"a": 1.0, "b": 10})
    m.add({"a": 3.0})
    assert m.result("train/") == {"train/a": 2.0, "train/b": 10.0}
    assert m.result() == {}


def test_episodes_track_return_and_length_per_env():
    ep = Episodes(2)
    step = lambda r, first, last: ep.add({"reward": np.array(r, float), "is_first": np.array(first),
                                          "is_last": np.array(last)})
    assert step([0, 0], [True, True], [False, False]) == []
    assert step([1, 2], [False, False], [False, False]) == []
    assert step([1, 5], [False, False], [False, True]) == [(1, 7.0, 2)]
    assert step([0, 0], [False, True], [False, False]) == []  # env 1 reset: no length for the reset observation
    assert step([2, 1], [False, False], [True, True]) == [(0, 4.0, 4), (1, 1.0, 1)]


def test_projection_counts_env_steps_and_updates_owed():
    # 1000 env steps in total, training from 100 stored steps, 0.25 updates per env step
    p = Projection(total=1000, updates_per_step=0.25, start=100)
    p.add(steps=50, seconds=0.5, updates=0, update_seconds=0.0)
    assert math.isnan(p.remaining(50))  # acting alone says nothing about the update cost: unknown, not optimistic
    p.add(steps=50, seconds=2.5 + 0.5, updates=1, update_seconds=2.5)  # an update costs 2.5 s, a step 10 ms
    assert p.per_step() == pytest.approx(0.01) and p.per_update() == pytest.approx(2.5)
    assert p.updates_owed(100) == pytest.approx(900 * 0.25)
    assert p.remaining(100) == pytest.approx(900 * 0.01 + 225 * 2.5)
    assert p.updates_owed(50) == pytest.approx(225)  # before training starts, only steps after the start owe updates
    assert p.remaining(1000) == 0.0


def test_projection_of_the_default_job_on_a_slow_cpu_is_hours_not_minutes():
    """The measured failure: 7.3 s per update and ~1.5 ms per env step at train ratio 256 (0.25 updates per step)
    must project ~55 h for the remaining ~109k steps, where the acting rate alone suggested under an hour."""
    cfg = make_config()  # the default job: Asterix, size12m, 110k steps, train ratio 256, B*T = 1024
    p = Projection(cfg.steps, cfg.train_ratio / (cfg.batch_size * cfg.batch_length), 1024)
    p.add(steps=1024, seconds=1.5, updates=0, update_seconds=0.0)
    p.add(steps=12, seconds=3 * 7.3 + 0.018, updates=3, update_seconds=3 * 7.3)
    hours = p.remaining(1036) / 3600
    assert 50 < hours < 60, hours
    note = practical_scale_note(cfg, p, 1036)
    assert "updates still owed x 7.30 s each" in note and "--preset=size1m --train_ratio=64" in note
    assert "--device=cuda" in note and "--env=ALE/Asterix-v5" in note
    steps_fit = int(note.split("--steps=")[1].split()[0])
    assert 1000 <= steps_fit and steps_fit * (1.5 / 1036 + 0.25 * 7.3) <= 3 * 3600 + 1  # fits in about 3 h


def test_format_duration():
    assert format_duration(7) == "7 s" and format_duration(95) == "1 min 35 s"
    assert format_duration(3725) == "1 h 02 min" and format_duration(float("nan")) == "?"


def test_malloc_tuning_is_left_to_the_programs(monkeypatch):
    """Building and training an agent must not change process-wide allocator settings (only entry points do)."""
    import ctypes

    from dreamer_ext.agent import Agent
    from tiny_agent_config import random_batch, tiny_config, vector_spec

    opened = []
    monkeypatch.setattr(loop, "_ALLOC_TUNED", False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: opened.append(name))
    agent = Agent(tiny_config(), vector_spec())
    agent.train_step(random_batch(vector_spec(), B=2, T=4))
    assert opened == []
    monkeypatch.setenv("DREAMER_EXT_MALLOC_TUNE", "1")
    loop.tune_cpu_allocator()  # the entry points' call does reach libc (and fails softly with this fake)
    assert opened == ["libc.so.6"]
