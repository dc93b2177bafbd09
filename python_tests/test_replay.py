"""Chunked FIFO replay: capacity/eviction, contiguous windows, online queue, determinism, dtypes."""
import numpy as np
import pytest

from dreamer_ext.replay import Replay


def step(worker, i, img=False):
    """A step whose 'idx' encodes (worker, position) so windows can be checked for contiguity."""
    s = {"idx": np.int64(worker * 100_000 + i), "reward": np.float32(i), "is_first": np.bool_(i % 7 == 0)}
    if img:
        s["image"] = np.full((4, 4, 3), i % 256, np.uint8)
    return s


def fill(replay, workers, n, img=False):
    for i in range(n):
        for w in range(workers):
            replay.add(step(w, i, img), worker=w)


def test_capacity_and_fifo_eviction_single_stream():
    r = Replay(capacity=100, length=10, chunk_size=16, online=False)
    fill(r, 1, 250)
    assert len(r) == 100 and r.inserted == 250 and r.evicted == 150
    assert r.streams[0].begin == 150 and r.streams[0].end == 250
    assert len(r.streams[0].chunks) <= 100 // 16 + 2  # evicted chunks are freed
    idx = r.sample(64)["idx"]
    assert idx.min() >= 150 and idx.max() <= 249
    assert r.num_windows() == 100 - 10 + 1


def test_eviction_is_global_fifo_over_streams():
    r = Replay(capacity=30, length=5, chunk_size=8, online=False)
    # worker 0 writes 20 steps first, then worker 1 writes 20: the oldest (all of worker 0's early steps) go first
    for i in range(20):
        r.add(step(0, i), worker=0)
    for i in range(20):
        r.add(step(1, i), worker=1)
    assert len(r) == 30
    assert (r.streams[0].begin, r.streams[0].end) == (10, 20)
    assert (r.streams[1].begin, r.streams[1].end) == (0, 20)


def test_windows_contiguous_within_one_stream_across_chunks():
    r = Replay(capacity=10_000, length=12, chunk_size=5, online=False, seed=1)
    fill(r, 3, 60)
    batch = r.sample(200)
    idx = batch["idx"]
    assert idx.shape == (200, 12)
    worker = idx // 100_000
    assert (worker == worker[:, :1]).all()  # one stream per window
    assert (np.diff(idx, axis=1) == 1).all()  # consecutive positions, including across chunk boundaries
    np.testing.assert_array_equal(batch["reward"], (idx % 100_000).astype(np.float32))
    np.testing.assert_array_equal(batch["is_first"], (idx % 100_000) % 7 == 0)  # windows cross episode starts
    assert batch["is_first"][:, 1:].any()


def test_uniform_over_windows():
    r = Replay(capacity=1000, length=5, chunk_size=4, online=False, seed=0)
    fill(r, 1, 20)  # 16 windows
    starts = r.sample(16_000)["idx"][:, 0]
    counts = np.bincount(starts, minlength=16)
    assert len(counts) == 16 and counts.min() > 800 and counts.max() < 1200


def test_online_queue_yields_each_fresh_window_exactly_once():
    T = 10
    r = Replay(capacity=10_000, length=T, chunk_size=7, online=True, seed=0)
    fill(r, 3, 40)  # each stream tiles into 4 fresh windows -> 12 fresh windows
    assert len(r.online_queue) == 12
    seen = []
    for _ in range(4):
        before = r.sampled_online
        batch = r.sample(5)
        k = r.sampled_online - before
        seen += [tuple(w) for w in batch["idx"][:k]]
    assert r.sampled_online == 12 and not r.online_queue
    starts = sorted((int(w[0]) // 100_000, int(w[0]) % 100_000) for w in seen)
    assert starts == sorted((w, s) for w in range(3) for s in (0, 10, 20, 30))
    assert len(set(seen)) == 12
    # new data produces new fresh windows, again exactly once
    for i in range(40, 50):
        r.add(step(0, i), worker=0)
    batch = r.sample(3)
    assert r.sampled_online == 13 and batch["idx"][0, 0] == 40


def test_online_queue_drops_evicted_windows():
    r = Replay(capacity=20, length=5, chunk_size=4, online=True)
    fill(r, 1, 60)
    batch = r.sample(8)
    assert batch["idx"].min() >= 40  # nothing from evicted data, even from the queue
    assert r.sampled_online <= 4


def test_deterministic_with_seed():
    a, b, c = (Replay(500, 8, chunk_size=16, seed=s) for s in (3, 3, 4))
    for r in (a, b, c):
        fill(r, 2, 100)
    for _ in range(8):  # past the (seed-independent) online queue of 24 fresh windows
        sa, sb, sc = a.sample(6), b.sample(6), c.sample(6)
        np.testing.assert_array_equal(sa["idx"], sb["idx"])
    assert not np.array_equal(sa["idx"], sc["idx"])
    assert a.state_dict() == b.state_dict()


def test_dtypes_and_shapes_preserved():
    r = Replay(capacity=200, length=6, chunk_size=8)
    r.add_batch({
        "image": np.zeros((2, 64, 64, 3), np.uint8), "vector": np.zeros((2, 5), np.float32),
        "action": np.zeros((2, 3), np.float32), "reward": np.zeros(2, np.float32),
        "is_first": np.ones(2, bool), "is_terminal": np.zeros(2, bool)})
    for _ in range(10):
        r.add_batch({
            "image": np.full((2, 64, 64, 3), 255, np.uint8), "vector": np.ones((2, 5), np.float32),
            "action": np.ones((2, 3), np.float32), "reward": np.ones(2, np.float32),
            "is_first": np.zeros(2, bool), "is_terminal": np.zeros(2, bool)})
    batch = r.sample(4)
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (4, 6, 64, 64, 3)
    assert batch["vector"].dtype == np.float32 and batch["vector"].shape == (4, 6, 5)
    assert batch["action"].shape == (4, 6, 3) and batch["reward"].shape == (4, 6)
    assert batch["is_first"].dtype == bool and batch["is_terminal"].dtype == bool
    assert len(r.streams) == 2 and len(r) == 22


def test_bad_input_raises_naming_the_argument():
    with pytest.raises(ValueError, match="capacity"):
        Replay(capacity=4, length=8)
    with pytest.raises(ValueError, match="length"):
        Replay(capacity=4, length=0)
    r = Replay(capacity=100, length=8)
    with pytest.raises(ValueError, match="replay"):
        r.sample(2)  # nothing stored yet
    r.add(step(0, 0))
    with pytest.raises(ValueError, match="keys"):
        r.add({"idx": np.int64(1)})
    with pytest.raises(ValueError, match="shape"):
        r.add({**step(0, 1), "reward": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="batch_size"):
        fill(r, 1, 10)
        r.sample(0)


def test_chunks_for_incremental_persistence():
    r = Replay(capacity=1000, length=4, chunk_size=10, online=False)
    fill(r, 2, 25)
    full = r.chunks()
    assert [c.uid for c in full] == sorted(c.uid for c in full) and all(c.full for c in full)
    assert len(full) == 4 and len(r.chunks(full_only=False)) == 6
    mark = max(c.uid for c in full) + 1
    fill(r, 1, 10)  # worker 0 positions 0..9 again (idx values only), completes its third chunk
    assert [c.worker for c in r.chunks(since_uid=mark)] == [0]
