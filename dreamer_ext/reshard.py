"""Resuming a data-parallel run with another number of processes: the replay shards of the old ranks are dealt out to
the new ones.

A checkpoint of a run with K processes is rank 0's main checkpoint (model, optimiser, its replay shard) plus one shard
checkpoint per rank r > 0 under ``<logdir>/rank<r>/`` (:func:`dreamer_ext.train.rank_dir`). Each shard's replay is a set
of *streams* (one per env of that rank), each a run of chunks. To continue with K' processes every new rank calls
:func:`deal_replay`, which

1. lists every old stream as a *piece* (its retained positions and the chunks that hold them), reading only the small
   ``meta`` entry of each chunk file;
2. when fewer than K' pieces hold a whole window, splits the piece with the most chunks at a chunk boundary (the
   windows that would cross the cut are lost; no step is) until every new rank can get one;
3. deals the pieces out by size, largest first, each to the rank holding the fewest steps so far (the same plan on every
   rank: it only depends on the checkpoints);
4. loads its own pieces as *retired* streams (worker ids from ``num_envs`` on, so the live envs start new streams
   0..num_envs-1), under fresh chunk uids above every uid of its directory, so the first save writes them as new files
   and no file of a kept checkpoint is overwritten; fresh windows still queued for training move with their pieces;
5. evicts the oldest steps if its share exceeds this rank's capacity (``replay_capacity / K'``).

The insertion counters of the ranks advance in lockstep (every rank adds ``num_envs`` steps per iteration), so the
dealt chunks keep their time stamps and FIFO eviction stays oldest-first across pieces from different ranks.
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from .checkpoint import CheckpointError, _chunk_from_payload, _read_chunk_file, _read_latent_file
from .replay import Chunk, Replay

__all__ = ["Piece", "plan_pieces", "deal", "deal_replay"]

_CHUNK_RE = re.compile(r"^chunk-(\d+)\.npz$")


@dataclasses.dataclass
class Piece:
    """Positions ``[begin, end)`` of one old stream (``shard``, ``worker``) and the chunks holding them, as
    ``(start, source)`` sorted by start; ``source`` is a chunk uid (a full chunk in the shard's ``replay/``) or the
    partial chunk's payload dict carried in the checkpoint file."""

    shard: int
    worker: int
    begin: int
    end: int
    chunks: list

    @property
    def steps(self) -> int:
        return self.end - self.begin


def _replay_dir(shard_dir: str) -> str:
    return os.path.join(shard_dir, "replay")


def _stream_pieces(shard: int, shard_dir: str, replay_entry: dict) -> list[Piece]:
    """One piece per non-empty stream of one old shard."""
    state = replay_entry["state"]
    where: dict[int, list] = {}
    for uid in replay_entry["chunks"]:
        path = os.path.join(_replay_dir(shard_dir), f"chunk-{int(uid):08d}.npz")
        meta = _chunk_meta(path)
        where.setdefault(int(meta[1]), []).append((int(meta[2]), int(uid)))
    for tail in replay_entry["tail"]:
        where.setdefault(int(tail["worker"]), []).append((int(tail["start"]), tail))
    pieces = []
    for key, (begin, end) in sorted(state["streams"].items(), key=lambda kv: int(kv[0])):
        w = int(key)
        if end > begin:
            chunks = sorted(where.get(w, []), key=lambda c: c[0])
            if not chunks:
                raise CheckpointError(f"shard {shard_dir!r}: stream {w} holds [{begin}, {end}) but names no chunk")
            pieces.append(Piece(shard, w, int(begin), int(end), chunks))
    return pieces


def _chunk_meta(path: str) -> np.ndarray:
    """``[uid, worker, start, size, count]`` of a chunk file, without reading its data."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["meta"]
    except FileNotFoundError:
        raise CheckpointError(f"replay chunk {path!r} named by the checkpoint is missing") from None
    except Exception as e:
        raise CheckpointError(f"replay chunk {path!r} is unreadable ({type(e).__name__}: {e})") from None


def plan_pieces(pieces: list[Piece], world: int, chunk_size: int, length: int = 1) -> list[Piece]:
    """``pieces`` split at chunk boundaries until at least ``world`` of them hold a window of ``length`` steps, so
    that every rank can sample (the piece with the most chunks is cut in half each time). An empty replay stays
    empty. Raises CheckpointError when the replay is too small for ``world`` processes."""
    pieces = list(pieces)
    usable = lambda: sum(p.steps >= length for p in pieces)  # noqa: E731
    while pieces and usable() < world:
        i = max(range(len(pieces)), key=lambda j: (len(pieces[j].chunks), -j))
        if len(pieces[i].chunks) < 2:
            raise CheckpointError(f"--resume: the replay of this checkpoint holds {usable()} stream piece(s) of at "
                                  f"least {length} steps that split at chunk boundaries ({chunk_size} steps), too "
                                  f"few to deal out to {world} processes; resume with at most {max(usable(), 1)}")
        p = pieces[i]
        cut = len(p.chunks) // 2
        mid = p.chunks[cut][0]  # the second half starts at a chunk's first position; the first half ends full
        pieces[i:i + 1] = [Piece(p.shard, p.worker, p.begin, mid, p.chunks[:cut]),
                           Piece(p.shard, p.worker, mid, p.end, p.chunks[cut:])]
    return pieces


def deal(pieces: list[Piece], world: int) -> list[list[int]]:
    """Indices of ``pieces`` per new rank: largest first, each to the rank with the fewest steps so far (ties: the
    lower rank); every rank's list in the pieces' order."""
    load = [0] * world
    out: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(pieces)), key=lambda j: (-pieces[j].steps, j)):
        r = min(range(world), key=lambda k: (load[k], k))
        out[r].append(i)
        load[r] += pieces[i].steps
    return [sorted(ix) for ix in out]


def _max_uid_on_disk(shard_dir: str) -> int:
    d = _replay_dir(shard_dir)
    uids = [int(m.group(1)) for m in map(_CHUNK_RE.match, os.listdir(d) if os.path.isdir(d) else []) if m]
    return max(uids, default=-1)


def deal_replay(shards: list[tuple[str, dict]], rank: int, world: int, num_envs: int, replay: Replay,
                own_dir: str, seed: int) -> dict:
    """Fill ``replay`` (this new rank's, empty) with its share of the old shards' replays.

    ``shards``: ``(directory, checkpoint payload)`` of every old rank in rank order (their ``replay`` entries are
    read); ``rank``/``world``: this process in the new group; ``num_envs``: envs per rank (the dealt streams get
    worker ids from there on); ``own_dir``: this rank's run directory (new uids start above its chunk files');
    ``seed``: the new sampling RNG's. Returns ``{"pieces", "steps", "mine", "my_steps"}`` for the resume message."""
    entries = [p["replay"] for _, p in shards]
    pieces = []
    for i, ((directory, _), rp) in enumerate(zip(shards, entries)):
        pieces += _stream_pieces(i, directory, rp)
    pieces = plan_pieces(pieces, world, replay.chunk_size, replay.length)
    mine = [pieces[i] for i in deal(pieces, world)[rank]]
    states = [rp["state"] for rp in entries]
    versions = [{int(u): int(v) for u, v in rp.get("latents", [])} for rp in entries]
    uid = 1 + max([_max_uid_on_disk(own_dir)] + [int(s["next_uid"]) for s in states])
    chunks: list[Chunk] = []
    streams, queue = {}, []
    for j, p in enumerate(mine):
        w = num_envs + j
        directory = shards[p.shard][0]
        for start, source in p.chunks:
            if isinstance(source, dict):
                c = _chunk_from_payload(source)
            else:
                c = _read_chunk_file(os.path.join(_replay_dir(directory), f"chunk-{source:08d}.npz"), source)
                v = versions[p.shard].get(source)
                if v is not None:
                    _read_latent_file(os.path.join(_replay_dir(directory), f"latent-{source:08d}-{v:012d}.npz"), c, v)
            c.uid, c.worker, uid = uid, w, uid + 1
            chunks.append(c)
        streams[str(w)] = [p.begin, p.end]
        queue += [[w, s] for ws, s in states[p.shard]["online_queue"]
                  if ws == p.worker and p.begin <= s and s + replay.length <= p.end]
    state = {
        **replay.state_dict(), "spec": states[0]["spec"],
        "mutations": max(int(s.get("mutations", 0)) for s in states),
        "size": sum(p.steps for p in mine), "inserted": max(int(s["inserted"]) for s in states),
        "evicted": sum(int(s["evicted"]) for s in states), "sampled": sum(int(s["sampled"]) for s in states),
        "sampled_online": sum(int(s["sampled_online"]) for s in states), "next_uid": uid, "streams": streams,
        "online_queue": queue,
    }
    try:
        replay.load_state_dict(state, chunks)
    except ValueError as e:
        raise CheckpointError(f"--resume: the dealt replay does not fit together ({e})") from None
    replay.rng = np.random.Generator(np.random.PCG64(seed))
    replay.shrink_to_capacity()
    return {"pieces": len(pieces), "steps": sum(p.steps for p in pieces), "mine": len(mine), "my_steps": len(replay)}
