"""Checkpoints of a run directory: atomic, versioned, with the replay buffer saved incrementally.

Layout inside a run directory::

    checkpoints/ckpt-<step:012d>.pt   one file per checkpoint (the newest ``keep`` are kept)
    replay/chunk-<uid:08d>.npz        full replay chunks, each written once and shared by all checkpoints
    replay/latent-<uid:08d>-<version:012d>.npz
                                      the mutable entries of a full chunk (replay context: the stored RSSM latents), a
                                      new file only when the chunk's version changed since the last save

A checkpoint file is a ``torch.save`` dict holding only tensors and plain Python values (so it loads with
``weights_only=True``)::

    format, version, step          "dreamer_ext.checkpoint", FORMAT_VERSION, env steps at save time
    config, spec                   the resolved Config as a dict, the EnvSpec as a dict
    agent                          Agent.checkpoint_state(): model (incl. slow critic, return scale), optimiser
    train_state                    the loop counters (train.TrainState as a dict)
    rng                            python / numpy / torch (CPU and CUDA) generator states
    replay                         {"state": Replay.state_dict(), "chunks": [uid, ...], "latents": [[uid, version], ...],
                                    "tail": [partial chunks, all entries]}
    logs                           {"metrics_offset": bytes of metrics.jsonl at save time}

Crash safety: every file is written to a temporary name in the same directory, flushed to disk and renamed over its
final name, then the directory entry is synced. New full chunks are written *before* the checkpoint that refers to
them, and chunk and latent files are deleted only once no kept checkpoint refers to them, so a SIGKILL at any instant
leaves the newest complete checkpoint loadable together with every file it names.
"""
from __future__ import annotations

import io
import os
import random
import re
import zipfile
from typing import Callable

import numpy as np
import torch

from .replay import Chunk, Replay

__all__ = [
    "FORMAT", "FORMAT_VERSION", "CheckpointError", "atomic_write", "list_checkpoints", "find_checkpoint",
    "load_checkpoint", "Checkpointer", "RunLock", "checkpoint_config", "restore_agent", "rng_state", "set_rng_state",
]

FORMAT = "dreamer_ext.checkpoint"
FORMAT_VERSION = 1
CKPT_DIR = "checkpoints"
REPLAY_DIR = "replay"
_CKPT_RE = re.compile(r"^ckpt-(\d+)\.pt$")
_CHUNK_RE = re.compile(r"^chunk-(\d+)\.npz$")
_LATENT_RE = re.compile(r"^latent-(\d+)-(\d+)\.npz$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable (truncated, corrupt) or incompatible with the current program."""


# ---------------------------------------------------------------------------------------------------------- files
def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` all-or-nothing: ``write(f)`` fills a temporary file that is fsynced and renamed over ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _remove_stale_tmp(directory: str) -> None:
    """Delete temporary files left by a writer that was killed mid-write."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``[(step, path), ...]`` of the checkpoint files of a run directory, oldest first (empty if none)."""
    directory = os.path.join(run_dir, CKPT_DIR)
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _CKPT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def find_checkpoint(path: str) -> str:
    """``path`` if it is a file, else the newest checkpoint of the run directory ``path``.

    Raises CheckpointError when ``path`` does not exist or the directory holds no checkpoint.
    """
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint: {path!r} is neither a checkpoint file nor a run directory")
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"checkpoint: run directory {path!r} holds no checkpoint ({CKPT_DIR}/ckpt-*.pt)")
    return found[-1][1]


def _reason(e: Exception) -> str:
    """The informative line of a torch.load error (its weights-only errors put the reason on a later line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for i, ln in enumerate(lines):
        if "WeightsUnpickler error:" in ln:
            rest = ln.split("WeightsUnpickler error:", 1)[1].strip()
            return rest or (lines[i + 1] if i + 1 < len(lines) else ln)
    return lines[0] if lines else ""


def load_checkpoint(path: str, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Load and check a checkpoint file (or a run directory's newest). Raises CheckpointError with the reason.

    ``mmap=True`` maps the tensors instead of reading them (cheap when only the config or counters are needed).
    """
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated zip, bad pickle, wrong file type, ...
        raise CheckpointError(
            f"checkpoint {path!r} is unreadable ({type(e).__name__}: {_reason(e)}); it is truncated, corrupt or not "
            f"a dreamer_ext checkpoint. Delete it to fall back to an older one."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} is not a dreamer_ext checkpoint (no format tag {FORMAT!r})")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {payload.get('version')!r}; this program reads "
                              f"version {FORMAT_VERSION}")
    missing = [k for k in ("step", "config", "spec", "agent", "train_state", "rng", "replay", "logs") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} lacks the entries {missing}")
    payload["path"] = path
    return payload


class RunLock:
    """Exclusive lock on a run directory (``<run_dir>/.lock``, held while the process lives).

    Two processes writing one run would overwrite each other's replay chunks; the second one gets CheckpointError.
    Uses ``fcntl.flock`` (POSIX); elsewhere it is a no-op.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, ".lock")
        self._file = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return
        os.makedirs(run_dir, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise CheckpointError(f"run directory {run_dir!r} is in use by another process (pid {holder}); "
                                  f"wait for it to stop or choose another --logdir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


# ---------------------------------------------------------------------------------------------- payload -> objects
def _where(payload: dict) -> str:
    return f"checkpoint {payload.get('path')!r}"


def checkpoint_config(payload: dict):
    """The run's :class:`~dreamer_ext.config.Config` saved in a checkpoint; CheckpointError if it does not load."""
    from .config import config_from_dict

    try:
        return config_from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{_where(payload)}: its config does not load in this version ({e})") from None


def restore_agent(agent, payload: dict, spec, optimizer: bool = True) -> None:
    """Check that the checkpoint was trained on ``spec`` and load its model (and optimiser) into ``agent``.

    Raises CheckpointError naming the file when the spec differs or the state does not fit the agent's config.
    """
    from .envs.spec import EnvSpec

    try:
        saved = EnvSpec(**payload["spec"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{_where(payload)}: malformed spec ({e})") from None
    if saved != spec:
        raise CheckpointError(f"{_where(payload)}: trained on {saved}, the environment now gives {spec}")
    try:
        if optimizer:
            agent.load_checkpoint_state(payload["agent"])
        else:
            agent.load_state_dict(payload["agent"]["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(f"{_where(payload)}: does not fit the model of this config "
                              f"({str(e).splitlines()[0]})") from None


# ------------------------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict:
    """Generator states of python ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        # only when CUDA is in use: querying would initialise a context on every visible GPU
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state` (CUDA states are restored only when the same number of devices is visible)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------------------------------------- replay
def _chunk_to_payload(c: Chunk) -> dict:
    """A partial chunk as tensors (only its filled rows)."""
    return {"uid": c.uid, "worker": c.worker, "start": c.start, "size": c.size, "count": c.count, "version": c.version,
            "time": torch.from_numpy(c.time[:c.count].copy()),
            "data": {k: torch.from_numpy(np.ascontiguousarray(v[:c.count])) for k, v in c.data.items()}}


def _chunk_from_payload(d: dict) -> Chunk:
    return Replay.chunk_from_arrays(d["uid"], d["worker"], d["start"], d["size"], d["count"],
                                    {k: v.numpy() for k, v in d["data"].items()}, d["time"].numpy(),
                                    d.get("version", 0))


def _write_arrays(path: str, arrays: dict, compress: bool = True) -> None:
    """Arrays as an ``.npz`` (zip of .npy; fast deflate, or stored as they are), written atomically."""
    def write(f):
        mode = dict(compression=zipfile.ZIP_DEFLATED, compresslevel=1) if compress else dict(compression=zipfile.ZIP_STORED)
        with zipfile.ZipFile(f, "w", **mode) as z:
            for name, arr in arrays.items():
                with z.open(name + ".npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, np.ascontiguousarray(arr), allow_pickle=False)
    atomic_write(path, write)


def _read_arrays(path: str, what: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except FileNotFoundError:
        raise CheckpointError(f"{what} {path!r} named by the checkpoint is missing") from None
    except Exception as e:
        raise CheckpointError(f"{what} {path!r} is unreadable ({type(e).__name__}: {e})") from None


def _write_chunk_file(path: str, c: Chunk, mutable: tuple[str, ...] = ()) -> None:
    """The immutable entries of a full chunk: ``meta`` = [uid, worker, start, size, count], ``time`` and ``data.<key>``
    for every key not in ``mutable``."""
    arrays = {"meta": np.array([c.uid, c.worker, c.start, c.size, c.count], np.int64), "time": c.time}
    arrays.update({f"data.{k}": v for k, v in c.data.items() if k not in mutable})
    _write_arrays(path, arrays)


def _read_chunk_file(path: str, uid: int) -> Chunk:
    z = _read_arrays(path, "replay chunk")
    try:
        meta, time = z["meta"], z["time"]
    except KeyError as e:
        raise CheckpointError(f"replay chunk {path!r} lacks the entry {e}") from None
    data = {name[5:]: arr for name, arr in z.items() if name.startswith("data.")}
    if int(meta[0]) != uid:
        raise CheckpointError(f"replay chunk {path!r} holds uid {int(meta[0])}, expected {uid}")
    return Chunk(int(meta[0]), int(meta[1]), int(meta[2]), int(meta[3]), data, time, int(meta[4]))


def _write_latent_file(path: str, c: Chunk, mutable: tuple[str, ...]) -> None:
    """The mutable entries of a full chunk at its current version: ``meta`` = [uid, version], ``data.<key>``. Stored
    without compression: float16 states barely deflate (about 10 %), and a save rewrites most of them."""
    arrays = {"meta": np.array([c.uid, c.version], np.int64)}
    arrays.update({f"data.{k}": c.data[k] for k in mutable})
    _write_arrays(path, arrays, compress=False)


def _read_latent_file(path: str, chunk: Chunk, version: int) -> None:
    """Put the mutable entries saved in ``path`` into ``chunk`` (checked: uid, version, row count)."""
    z = _read_arrays(path, "replay latent file")
    meta = z.get("meta")
    if meta is None or [int(meta[0]), int(meta[1])] != [chunk.uid, version]:
        got = None if meta is None else meta.tolist()
        raise CheckpointError(f"replay latent file {path!r} holds (uid, version) {got}, expected {[chunk.uid, version]}")
    for name, arr in z.items():
        if name.startswith("data."):
            if arr.shape[:1] != (chunk.size,):
                raise CheckpointError(f"replay latent file {path!r}: {name} has {arr.shape[0]} rows, the chunk "
                                      f"{chunk.size}")
            chunk.data[name[5:]] = arr
    chunk.version = version


def _file_refs(replay_entry: dict) -> set:
    """The replay files a checkpoint's ``replay`` entry names: chunk uids (ints) and latent (uid, version) pairs."""
    return {int(u) for u in replay_entry["chunks"]} | {(int(u), int(v)) for u, v in replay_entry.get("latents", [])}


# ------------------------------------------------------------------------------------------------------ checkpointer
class Checkpointer:
    """Saves and restores checkpoints of one run directory, keeping the newest ``keep``.

    ``save(step, payload, replay)`` writes the replay chunks that are new since the last save, then the checkpoint
    file, then prunes old checkpoints and chunk files no kept checkpoint refers to. ``load(path)`` returns the checked
    payload and (if a replay is given) restores it.
    """

    def __init__(self, run_dir: str, keep: int = 2):
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: must be a positive integer, got {keep!r}")
        self.run_dir, self.keep = run_dir, keep
        self.ckpt_dir = os.path.join(run_dir, CKPT_DIR)
        self.replay_dir = os.path.join(run_dir, REPLAY_DIR)
        os.makedirs(self.ckpt_dir, exist_ok=True)
        os.makedirs(self.replay_dir, exist_ok=True)
        _remove_stale_tmp(self.ckpt_dir)
        _remove_stale_tmp(self.replay_dir)
        self._written: set[int] = set()  # chunk uids known to be on disk
        self._written_latents: set[tuple[int, int]] = set()  # (uid, version) of latent files known to be on disk
        self._refs: dict[str, set] = {}  # checkpoint path -> the chunk uids and latent (uid, version)s it names

    def chunk_path(self, uid: int) -> str:
        return os.path.join(self.replay_dir, f"chunk-{uid:08d}.npz")

    def latent_path(self, uid: int, version: int) -> str:
        return os.path.join(self.replay_dir, f"latent-{uid:08d}-{version:012d}.npz")

    def checkpoint_path(self, step: int) -> str:
        return os.path.join(self.ckpt_dir, f"ckpt-{step:012d}.pt")

    # ---------------------------------------------------------------- save
    def save(self, step: int, payload: dict, replay: Replay) -> str:
        """Write a checkpoint for env step ``step``; ``payload`` holds everything but ``format``/``version``/``replay``.

        Writes the full chunks new since the last save, and the mutable entries of every full chunk whose version is
        new; partial chunks ride whole in the checkpoint file."""
        full, tail = [], []
        for c in replay.chunks(full_only=False):
            (full if c.full else tail).append(c)
        mutable = replay.mutable
        for c in full:
            if c.uid not in self._written:
                _write_chunk_file(self.chunk_path(c.uid), c, mutable)
                self._written.add(c.uid)
            if mutable and (c.uid, c.version) not in self._written_latents:
                _write_latent_file(self.latent_path(c.uid, c.version), c, mutable)
                self._written_latents.add((c.uid, c.version))
        uids = [c.uid for c in full]
        latents = [[c.uid, c.version] for c in full] if mutable else []
        doc = {"format": FORMAT, "version": FORMAT_VERSION, "step": int(step), **payload,
               "replay": {"state": replay.state_dict(), "chunks": uids, "latents": latents,
                          "tail": [_chunk_to_payload(c) for c in tail]}}
        path = self.checkpoint_path(step)
        atomic_write(path, lambda f: torch.save(doc, f))
        self._refs[path] = _file_refs(doc["replay"])
        self._prune()
        return path

    def _prune(self) -> None:
        found = list_checkpoints(self.run_dir)
        for _, path in found[:-self.keep]:
            os.unlink(path)
            self._refs.pop(path, None)
        referenced: set = set()
        for _, path in found[-self.keep:]:
            refs = self._refs.get(path)
            if refs is None:  # written by an earlier process: read only its file lists
                try:
                    refs = _file_refs(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["replay"])
                except Exception:
                    return  # unreadable: keep every replay file rather than guess
                self._refs[path] = refs
            referenced |= refs
        for name in os.listdir(self.replay_dir):
            m, lm = _CHUNK_RE.match(name), _LATENT_RE.match(name)
            if m and int(m.group(1)) not in referenced:
                os.unlink(os.path.join(self.replay_dir, name))
                self._written.discard(int(m.group(1)))
            elif lm and (int(lm.group(1)), int(lm.group(2))) not in referenced:
                os.unlink(os.path.join(self.replay_dir, name))
                self._written_latents.discard((int(lm.group(1)), int(lm.group(2))))

    # ---------------------------------------------------------------- load
    def load(self, path: str | None = None, replay: Replay | None = None, map_location="cpu") -> dict:
        """Load ``path`` (default: the newest checkpoint of the run) and restore ``replay`` from it."""
        payload = load_checkpoint(path or self.run_dir, map_location)
        if replay is not None:
            self.restore_replay(payload, replay)
        return payload

    def restore_replay(self, payload: dict, replay: Replay) -> None:
        """Fill ``replay`` from a loaded checkpoint: its full chunks from ``replay/``, the partial ones from the file."""
        try:
            rp = payload["replay"]
            uids = [int(u) for u in rp["chunks"]]
            versions = {int(u): int(v) for u, v in rp.get("latents", [])}
            chunks = []
            for uid in uids:
                chunk = _read_chunk_file(self.chunk_path(uid), uid)
                if uid in versions:
                    _read_latent_file(self.latent_path(uid, versions[uid]), chunk, versions[uid])
                chunks.append(chunk)
            chunks += [_chunk_from_payload(d) for d in rp["tail"]]
            replay.load_state_dict(rp["state"], chunks)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {payload.get('path')!r}: replay does not match ({e})") from None
        self._written = set(uids)
        self._written_latents = set(versions.items())
        self._refs[payload["path"]] = _file_refs(rp)
