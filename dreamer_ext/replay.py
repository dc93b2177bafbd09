"""Chunked FIFO replay with uniform window sampling and the DreamerV3 (V2) "online" queue.

Layout
------
Each environment (``worker``) writes its own *stream*: the steps it produced, in order, across episode boundaries (``is_first``
marks where a new episode starts inside a stream). A stream is stored as a deque of :class:`Chunk` s, fixed-size blocks of
consecutive steps (numpy arrays, uint8 images stay uint8). Position ``p`` of a stream is the ``p``-th step that worker ever added;
``begin``/``end`` delimit the retained positions.

* Capacity is counted in steps over all streams. When it is exceeded, the globally oldest step (smallest insertion counter) is
  evicted, one step at a time, and a chunk is freed once all its steps are evicted.
* A *window* is ``length`` consecutive positions of one stream. ``sample`` draws windows uniformly over all windows that lie in
  retained data (so every stored window is equally likely, regardless of which stream it is in); windows may cross episode
  boundaries.
* Online queue (V2): every ``online_stride`` new steps of a stream (default: ``length``, i.e. non-overlapping windows tiling the
  stream) the window ending at the newest step becomes *fresh* and is queued. ``sample`` first takes up to ``batch_size`` fresh
  windows from the queue (oldest first, each exactly once; windows whose data was evicted meanwhile are dropped), then fills the
  rest of the batch uniformly.

Mutable entries (replay context): keys named in ``mutable`` (the RSSM latents the acting policy stored with each step)
may be rewritten later with :meth:`Replay.update`, e.g. with the posteriors an update just computed for the windows it
trained on. Every other key is written once, by :meth:`Replay.add`.

Persistence: the immutable entries of a chunk never change once it is ``full``; each chunk has a unique ``uid`` and knows
its ``worker`` and stream ``start``, so saving only the chunks completed since the last save is enough to write them
incrementally. A chunk's ``version`` is the replay's mutation counter at the last change of its mutable entries, so a
saver can write those again only when ``(uid, version)`` is new. ``state_dict()`` holds everything else (counters,
stream bounds, online queue, RNG state) as plain JSON-able values.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Chunk:
    """Up to ``size`` consecutive steps of one stream.

    data: key -> array ``[size, ...]`` (dtype of the first step added); ``time`` int64 ``[size]`` global insertion counters;
    ``start``: stream position of row 0; ``count``: rows filled; ``version``: the replay's mutation counter when a
    mutable entry of this chunk last changed.
    """

    uid: int
    worker: int
    start: int
    size: int
    data: dict = field(default_factory=dict)
    time: np.ndarray | None = None
    count: int = 0
    version: int = 0

    @property
    def full(self) -> bool:
        return self.count == self.size


@dataclass
class _Stream:
    chunks: collections.deque = field(default_factory=collections.deque)
    begin: int = 0  # first retained position
    end: int = 0  # one past the newest position


class Replay:
    """Uniform FIFO replay over per-env streams plus an online queue of fresh windows.

    Args:
        capacity: maximum number of stored steps (all streams together), >= ``length``.
        length: window length T of sampled sequences.
        chunk_size: steps per storage chunk.
        online: enable the online queue.
        online_stride: new steps per stream between fresh windows (default ``length``).
        seed: seed of the sampling RNG.
        mutable: step keys that :meth:`update` may rewrite after they were added (the stored latents).
    """

    def __init__(
        self,
        capacity: int,
        length: int,
        chunk_size: int = 1024,
        online: bool = True,
        online_stride: int | None = None,
        seed: int = 0,
        mutable: tuple[str, ...] = (),
    ):
        for name, v in (("length", length), ("capacity", capacity), ("chunk_size", chunk_size)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if capacity < length:
            raise ValueError(f"capacity: must be >= length ({length}), got {capacity}")
        stride = length if online_stride is None else online_stride
        if not isinstance(stride, (int, np.integer)) or stride < 1:
            raise ValueError(f"online_stride: must be a positive integer, got {online_stride!r}")
        self.capacity = int(capacity)
        self.length = int(length)
        self.chunk_size = int(chunk_size)
        self.online = bool(online)
        self.online_stride = int(stride)
        self.mutable = tuple(mutable)
        self.mutations = 0  # counts changes of mutable entries (adds and updates): the chunk versions
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.streams: dict[int, _Stream] = {}
        self.online_queue: collections.deque = collections.deque()  # (worker, start position)
        self._spec: dict | None = None  # key -> (shape, dtype)
        self.size = 0  # steps currently stored
        self.inserted = 0  # steps ever added (the global insertion counter)
        self.evicted = 0
        self.sampled = 0  # windows ever sampled
        self.sampled_online = 0
        self.next_uid = 0

    # ------------------------------------------------------------------------------------------------------------ writing
    def __len__(self) -> int:
        return self.size

    def add(self, step: dict, worker: int = 0) -> None:
        """Append one step (key -> array of the per-step shape, or scalar) to ``worker``'s stream."""
        if self._spec is None:
            missing = [k for k in self.mutable if k not in step]
            if missing:
                raise ValueError(f"step: missing the mutable keys {missing} this replay was made with")
            self._spec = {k: (np.shape(v), np.asarray(v).dtype) for k, v in step.items()}
        elif step.keys() != self._spec.keys():
            raise ValueError(f"step: keys {sorted(step)} differ from the first step's {sorted(self._spec)}")
        stream = self.streams.get(worker)
        if stream is None:
            stream = self.streams[worker] = _Stream()
        if not stream.chunks or stream.chunks[-1].full:
            stream.chunks.append(self._new_chunk(worker, stream.end))
        chunk = stream.chunks[-1]
        row = chunk.count
        for k, v in step.items():
            shape, dtype = self._spec[k]
            v = np.asarray(v)
            if v.shape != shape:
                raise ValueError(f"step[{k!r}]: expected shape {shape}, got {v.shape}")
            chunk.data[k][row] = v
        chunk.time[row] = self.inserted
        chunk.count += 1
        if self.mutable:
            self.mutations += 1
            chunk.version = self.mutations
        stream.end += 1
        self.inserted += 1
        self.size += 1
        if self.online and stream.end >= self.length and (stream.end - self.length) % self.online_stride == 0:
            self.online_queue.append((worker, stream.end - self.length))
        while self.size > self.capacity:
            self._evict_one()

    def add_batch(self, steps: dict) -> None:
        """Append one step per env: ``steps[key]`` has shape ``[N, ...]``; row ``i`` goes to worker ``i``."""
        n = {len(v) for v in steps.values()}
        if len(n) != 1:
            raise ValueError(f"steps: all entries need the same leading (env) size, got {sorted(n)}")
        for i in range(n.pop()):
            self.add({k: v[i] for k, v in steps.items()}, worker=i)

    def _new_chunk(self, worker: int, start: int) -> Chunk:
        data = {k: np.zeros((self.chunk_size,) + shape, dtype) for k, (shape, dtype) in self._spec.items()}
        chunk = Chunk(self.next_uid, worker, start, self.chunk_size, data, np.zeros(self.chunk_size, np.int64))
        self.next_uid += 1
        return chunk

    def shrink_to_capacity(self) -> int:
        """Evict the oldest steps until at most ``capacity`` are stored (after a load that brought more, e.g. a replay
        dealt out to fewer processes); returns how many were evicted."""
        n = 0
        while self.size > self.capacity:
            self._evict_one()
            n += 1
        return n

    def _evict_one(self) -> None:
        oldest, victim = None, None
        for stream in self.streams.values():
            if stream.begin == stream.end:
                continue
            first = stream.chunks[0]
            t = first.time[stream.begin - first.start]
            if oldest is None or t < oldest:
                oldest, victim = t, stream
        victim.begin += 1
        first = victim.chunks[0]
        if victim.begin >= first.start + first.size:
            victim.chunks.popleft()
        self.size -= 1
        self.evicted += 1
        while self.online_queue and not self._window_ok(*self.online_queue[0]):
            self.online_queue.popleft()

    # ----------------------------------------------------------------------------------------------------------- reading
    def _window_ok(self, worker: int, start: int) -> bool:
        stream = self.streams[worker]
        return stream.begin <= start and start + self.length <= stream.end

    def _read(self, worker: int, start: int, out: dict, b: int) -> None:
        """Copy positions ``[start, start + length)`` of a stream into ``out[key][b]``."""
        stream = self.streams[worker]
        c0 = stream.chunks[0].start
        pos, filled = start, 0
        while filled < self.length:
            chunk = stream.chunks[(pos - c0) // self.chunk_size]
            row = pos - chunk.start
            n = min(self.length - filled, chunk.count - row)
            for k, arr in out.items():
                arr[b, filled:filled + n] = chunk.data[k][row:row + n]
            filled += n
            pos += n

    def num_windows(self) -> int:
        """Number of distinct windows that could be sampled uniformly now."""
        return sum(max(0, s.end - s.begin - self.length + 1) for s in self.streams.values())

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of windows: key -> array ``[batch_size, length, ...]`` with the stored dtypes
        (``read(sample_windows(batch_size))``)."""
        return self.read(self.sample_windows(batch_size))

    def sample_windows(self, batch_size: int) -> np.ndarray:
        """Pick ``batch_size`` windows: int64 ``[batch_size, 2]`` rows of (worker, start position).

        Rows ``0..k-1`` are fresh windows from the online queue (k <= batch_size), the rest are uniform over all windows.
        Raises ValueError when no stream holds ``length`` steps yet.
        """
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size: must be a positive integer, got {batch_size!r}")
        workers = list(self.streams)
        counts = np.array([max(0, self.streams[w].end - self.streams[w].begin - self.length + 1) for w in workers])
        total = int(counts.sum())
        if total == 0:
            raise ValueError(f"replay: no stream holds length={self.length} steps yet (stored {self.size} steps)")
        picks: list[tuple[int, int]] = []
        while self.online and self.online_queue and len(picks) < batch_size:
            w, s = self.online_queue.popleft()
            if self._window_ok(w, s):
                picks.append((w, s))
        self.sampled_online += len(picks)
        rest = batch_size - len(picks)
        if rest:
            idx = self.rng.integers(0, total, size=rest)
            bounds = np.cumsum(counts)
            which = np.searchsorted(bounds, idx, side="right")
            for i, j in zip(idx, which):
                offset = int(i - (bounds[j] - counts[j]))
                picks.append((workers[j], self.streams[workers[j]].begin + offset))
        self.sampled += batch_size
        return np.array(picks, np.int64).reshape(batch_size, 2)

    def read(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """The steps of ``windows`` (``[B, 2]`` rows of worker, start): key -> ``[B, length, ...]``. Raises ValueError
        for a window that is not (or no longer) stored."""
        windows = self._check_windows(windows)
        out = {k: np.empty((len(windows), self.length) + shape, dtype) for k, (shape, dtype) in self._spec.items()}
        for b, (w, s) in enumerate(windows.tolist()):
            if not self._window_ok(w, s):
                raise ValueError(f"windows[{b}]: ({w}, {s}) is not a stored window of length {self.length}")
            self._read(w, s, out, b)
        return out

    def update(self, windows: np.ndarray, offset: int, values: dict[str, np.ndarray]) -> int:
        """Rewrite mutable entries: ``values[key][b, t]`` goes to position ``start_b + offset + t`` of window ``b``'s
        stream, for ``values[key]`` of shape ``[B, L, ...]`` with ``offset + L <= length``. Positions evicted since the
        windows were sampled are skipped. Returns the number of steps written."""
        windows = self._check_windows(windows)
        bad = [k for k in values if k not in self.mutable]
        if bad:
            raise ValueError(f"values: keys {bad} are not mutable in this replay (mutable: {list(self.mutable)})")
        lengths = set()
        for k, v in values.items():
            shape, dtype = self._spec[k]
            if v.ndim < 2 or v.shape[0] != len(windows) or v.shape[2:] != shape:
                raise ValueError(f"values[{k!r}]: expected shape [{len(windows)}, L, *{shape}], got {v.shape}")
            lengths.add(v.shape[1])
        if len(lengths) > 1:
            raise ValueError(f"values: entries have different lengths {sorted(lengths)}")
        L = lengths.pop() if lengths else 0
        if not (isinstance(offset, (int, np.integer)) and offset >= 0 and offset + L <= self.length):
            raise ValueError(f"offset: need 0 <= offset and offset + {L} <= length={self.length}, got {offset!r}")
        self.mutations += 1
        written = 0
        for b, (w, s) in enumerate(windows.tolist()):
            stream = self.streams.get(w)
            if stream is None:
                continue
            lo, hi = max(s + offset, stream.begin), min(s + offset + L, stream.end)
            pos = lo
            c0 = stream.chunks[0].start if stream.chunks else 0
            while pos < hi:
                chunk = stream.chunks[(pos - c0) // self.chunk_size]
                row = pos - chunk.start
                n = min(hi - pos, chunk.count - row)
                t = pos - (s + offset)
                for k, v in values.items():
                    chunk.data[k][row:row + n] = v[b, t:t + n]
                chunk.version = self.mutations
                written += n
                pos += n
        return written

    def _check_windows(self, windows) -> np.ndarray:
        windows = np.asarray(windows)
        if windows.ndim != 2 or windows.shape[1] != 2 or not np.issubdtype(windows.dtype, np.integer):
            raise ValueError(f"windows: expected integer rows of (worker, start) [B, 2], got {windows.dtype} "
                             f"{windows.shape}")
        if self._spec is None:
            raise ValueError("replay: nothing stored yet")
        return windows

    # ------------------------------------------------------------------------------------------------------------- state
    def stats(self) -> dict:
        return {
            "replay_size": self.size,
            "replay_inserted": self.inserted,
            "replay_sampled": self.sampled,
            "replay_sampled_online": self.sampled_online,
            "replay_online_queue": len(self.online_queue),
        }

    def state_dict(self) -> dict:
        """Everything except the chunk contents, as JSON-able values."""
        return {
            "capacity": self.capacity,
            "length": self.length,
            "chunk_size": self.chunk_size,
            "online": self.online,
            "online_stride": self.online_stride,
            "mutable": list(self.mutable),
            "mutations": self.mutations,
            "size": self.size,
            "inserted": self.inserted,
            "evicted": self.evicted,
            "sampled": self.sampled,
            "sampled_online": self.sampled_online,
            "next_uid": self.next_uid,
            "streams": {str(w): [s.begin, s.end] for w, s in self.streams.items()},
            "online_queue": [list(x) for x in self.online_queue],
            "rng": self.rng.bit_generator.state,
            "spec": {k: [list(shape), np.dtype(dtype).str] for k, (shape, dtype) in (self._spec or {}).items()},
        }

    def load_state_dict(self, state: dict, chunks: list[Chunk]) -> None:
        """Restore a replay saved as ``state_dict()`` plus its retained chunks (any order; full and partial).

        The settings (capacity, length, chunk size, online, stride) must match this instance's. Raises ValueError
        naming what is inconsistent (a missing or overlapping chunk, a chunk not covering its stream, ...).
        """
        state = {"mutable": [], "mutations": 0, **state}  # saved before mutable entries existed
        for key in ("capacity", "length", "chunk_size", "online", "online_stride", "mutable"):
            mine = list(self.mutable) if key == "mutable" else getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"state[{key!r}]: saved replay has {state[key]!r}, this replay {mine!r}")
        spec = {k: (tuple(shape), np.dtype(dt)) for k, (shape, dt) in state["spec"].items()} or None
        by_worker: dict[int, list[Chunk]] = collections.defaultdict(list)
        for c in chunks:
            by_worker[c.worker].append(c)
        streams: dict[int, _Stream] = {}
        for key, (begin, end) in state["streams"].items():
            w = int(key)
            cs = sorted(by_worker.pop(w, []), key=lambda c: c.start)
            stream = _Stream(collections.deque(cs), int(begin), int(end))
            if begin < end:
                if not cs:
                    raise ValueError(f"chunks: stream {w} holds positions [{begin}, {end}) but no chunk was given")
                if not (cs[0].start <= begin < cs[0].start + cs[0].size):
                    raise ValueError(f"chunks: first chunk of stream {w} starts at {cs[0].start}, stream begins at {begin}")
                if cs[-1].start + cs[-1].count != end:
                    raise ValueError(f"chunks: last chunk of stream {w} ends at {cs[-1].start + cs[-1].count}, "
                                     f"stream ends at {end}")
            for a, b in zip(cs, cs[1:]):
                if not a.full or b.start != a.start + a.size:
                    raise ValueError(f"chunks: stream {w} has a gap or a partial chunk between uids {a.uid} and {b.uid}")
            for c in cs:
                for k, (shape, dtype) in (spec or {}).items():
                    arr = c.data.get(k)
                    if arr is None or arr.shape != (c.size,) + shape or arr.dtype != dtype:
                        got = None if arr is None else (arr.shape, arr.dtype.str)
                        raise ValueError(f"chunks: chunk {c.uid} entry {k!r} is {got}, expected {((c.size,) + shape)}")
            streams[w] = stream
        if by_worker:
            raise ValueError(f"chunks: given for workers {sorted(by_worker)} that the saved state does not have")
        self._spec = spec
        self.streams = streams
        for key in ("size", "inserted", "evicted", "sampled", "sampled_online", "next_uid", "mutations"):
            setattr(self, key, int(state[key]))
        self.online_queue = collections.deque((int(w), int(s)) for w, s in state["online_queue"])
        self.rng.bit_generator.state = state["rng"]
        stored = sum(s.end - s.begin for s in streams.values())
        if stored != self.size:
            raise ValueError(f"state['size']: {self.size} but the streams hold {stored} steps")

    @staticmethod
    def chunk_from_arrays(uid: int, worker: int, start: int, size: int, count: int, data: dict,
                          time: np.ndarray, version: int = 0) -> Chunk:
        """A chunk of capacity ``size`` holding the first ``count`` rows ``data[key][:count]`` (rows beyond are zeros)."""
        if not 0 <= count <= size:
            raise ValueError(f"count: must be in [0, {size}], got {count}")
        full = {}
        for k, arr in data.items():
            arr = np.asarray(arr)
            if arr.shape[0] != count and arr.shape[0] != size:
                raise ValueError(f"data[{k!r}]: leading size {arr.shape[0]}, expected {count} or {size}")
            out = np.zeros((size,) + arr.shape[1:], arr.dtype)
            out[:count] = arr[:count]
            full[k] = out
        t = np.zeros(size, np.int64)
        t[:count] = np.asarray(time)[:count]
        return Chunk(int(uid), int(worker), int(start), int(size), full, t, int(count), int(version))

    def chunks(self, since_uid: int = 0, full_only: bool = True) -> list[Chunk]:
        """Retained chunks with ``uid >= since_uid`` (the unit of incremental persistence), oldest first."""
        out = [c for s in self.streams.values() for c in s.chunks if c.uid >= since_uid and (c.full or not full_only)]
        return sorted(out, key=lambda c: c.uid)
