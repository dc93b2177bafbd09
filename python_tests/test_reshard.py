"""Dealing the replay shards of a data-parallel checkpoint out to another number of processes (dreamer_ext/reshard.py):
every stored step ends up on exactly one new rank, with its data, stored latents and time stamp; the split and the
deal are the same on every rank; the dealt chunks get fresh uids, so the next save writes them as new files."""
import os

import numpy as np
import pytest

from dreamer_ext.checkpoint import CheckpointError, Checkpointer, load_checkpoint
from dreamer_ext.replay import Replay
from dreamer_ext.reshard import Piece, deal, deal_replay, plan_pieces

LENGTH, CHUNK, ENVS = 5, 8, 2


def make_replay(capacity=1000, seed=0):
    return Replay(capacity, LENGTH, chunk_size=CHUNK, seed=seed, mutable=("lat",))


def fill(replay, rank, steps):
    """``steps`` iterations of ENVS envs; every step carries a unique id (rank, env, position)."""
    for t in range(steps):
        ids = np.array([rank * 10**6 + w * 10**4 + t for w in range(ENVS)], np.int64)
        replay.add_batch({"id": ids, "obs": np.stack([np.full(3, i % 251, np.uint8) for i in ids]),
                          "lat": ((ids[:, None] % 1000) * np.ones((1, 2))).astype(np.float16)})
    return replay


def save_shards(tmp_path, sizes):
    """One checkpoint per old rank (rank 0 in the run dir, rank r in run/rank<r>) at step 100: [(dir, payload)]."""
    shards = []
    for r, steps in enumerate(sizes):
        directory = str(tmp_path / "run") if r == 0 else str(tmp_path / "run" / f"rank{r}")
        replay = fill(make_replay(seed=r), r, steps)
        replay.update(np.array([[0, 0]]), 0, {"lat": np.full((1, LENGTH, 2), 7.0, np.float16)})  # a rewritten latent
        replay.sample_windows(3)  # takes some fresh windows off the online queue
        Checkpointer(directory).save(100, {k: {} for k in ("config", "spec", "agent", "train_state", "rng", "logs")},
                                     replay)
        shards.append((directory, load_checkpoint(directory)))
    return shards


def all_steps(replay):
    out = {}
    for w, s in replay.streams.items():
        for pos in range(s.begin, s.end):
            c = next(c for c in s.chunks if c.start <= pos < c.start + c.count)
            row = pos - c.start
            out[int(c.data["id"][row])] = (c.data["obs"][row].tolist(), c.data["lat"][row].tolist(), int(c.time[row]))
    return out


@pytest.mark.parametrize("world", [1, 2, 3, 7])  # 7 > the 4 old streams: pieces are split
def test_every_step_goes_to_exactly_one_new_rank(tmp_path, world):
    sizes = [37, 50]  # 74 + 100 steps; streams of 37 and 50 steps (5 and 7 chunks of 8)
    shards = save_shards(tmp_path, sizes)
    originals = {}
    for directory, payload in shards:
        ck = Checkpointer(directory)
        r = make_replay()
        ck.restore_replay(payload, r)
        originals.update(all_steps(r))
    seen = {}
    for rank in range(world):
        own = str(tmp_path / "new" / f"r{rank}")
        os.makedirs(own)
        r = make_replay()
        info = deal_replay(shards, rank, world, ENVS, r, own, seed=rank)
        got = all_steps(r)
        assert not set(got) & set(seen)  # no step on two ranks
        seen.update(got)
        assert len(r) == info["my_steps"] > 0
        assert all(w >= ENVS for w in r.streams)  # retired streams: the live envs start new ones
        r.sample(4)  # and it samples
        # the queued fresh windows moved with their streams and are still valid windows
        assert all(r._window_ok(w, s) for w, s in r.online_queue)
        # fresh uids above every old one: saving writes new files and overwrites none of the old checkpoints'
        old_max = max(p["replay"]["state"]["next_uid"] for _, p in shards)
        assert min(c.uid for c in r.chunks(full_only=False)) > old_max
    assert seen == originals  # data, stored (and rewritten) latents and time stamps intact


def test_queue_and_counters_are_carried(tmp_path):
    shards = save_shards(tmp_path, [20, 20])
    r = make_replay()
    deal_replay(shards, 0, 1, ENVS, r, str(tmp_path / "run"), seed=0)
    states = [p["replay"]["state"] for _, p in shards]
    assert r.inserted == max(s["inserted"] for s in states)
    assert r.sampled == sum(s["sampled"] for s in states)
    assert len(r.online_queue) == sum(len(s["online_queue"]) for s in states)
    # the new steps get time stamps after every dealt one, so FIFO eviction stays oldest-first
    fill(r, 5, 1)
    newest = max(c.time[:c.count].max() for c in r.chunks(full_only=False))
    assert newest == r.inserted - 1 and newest > max(s["inserted"] for s in states) - 1


def test_a_share_beyond_the_new_capacity_evicts_the_oldest(tmp_path):
    shards = save_shards(tmp_path, [30, 30])  # 120 steps in all
    r = Replay(50, LENGTH, chunk_size=CHUNK, seed=0, mutable=("lat",))
    deal_replay(shards, 0, 1, ENVS, r, str(tmp_path / "run"), seed=0)
    assert len(r) == 50
    kept = all_steps(r)
    # each old rank stamped its 60 steps 0..59; the 70 oldest (stamps 0..34 of both) went
    assert sorted({t for _, _, t in kept.values()}) == list(range(35, 60))


def test_the_plan_splits_at_chunk_boundaries_and_is_balanced():
    pieces = [Piece(0, 0, 3, 40, [(0, 1), (8, 2), (16, 3), (24, 4), (32, 5)]), Piece(1, 0, 0, 10, [(0, 6), (8, 7)])]
    out = plan_pieces(pieces, 4, 8)
    assert len(out) == 4
    assert sum(p.steps for p in out) == 37 + 10  # no position lost
    for p in out:  # every piece starts inside its first chunk and ends inside its last
        assert p.chunks[0][0] <= p.begin < p.chunks[0][0] + 8 and p.chunks[-1][0] < p.end <= p.chunks[-1][0] + 8
    ranks = deal(out, 4)
    assert sorted(i for r in ranks for i in r) == list(range(4))
    assert deal(out, 4) == ranks  # deterministic: every rank computes the same plan
    loads = [sum(pieces[i].steps for i in r) for r in deal(pieces, 2)]
    assert loads == [37, 10]
    with pytest.raises(CheckpointError, match="resume with at most 2"):
        plan_pieces([Piece(0, 0, 0, 5, [(0, 1)]), Piece(0, 1, 0, 5, [(0, 2)])], 3, 8)
    # a piece shorter than a window does not count: the long one is split instead, so every rank can sample
    out = plan_pieces([Piece(0, 0, 0, 32, [(0, 1), (8, 2), (16, 3), (24, 4)]), Piece(0, 1, 0, 3, [(0, 5)])], 2, 8,
                      length=5)
    assert len(out) == 3 and sorted(p.steps for p in out) == [3, 16, 16]
    assert [sum(out[i].steps for i in r) for r in deal(out, 2)] == [19, 16]  # both ranks hold a 16-step piece
    assert plan_pieces([], 4, 8) == []  # an empty replay deals out as empty
