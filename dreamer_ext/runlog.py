"""Run logger: scalars to ``metrics.jsonl`` and (optionally) TensorBoard; images and GIF videos to TensorBoard.

Files in ``logdir``:

* ``metrics.jsonl`` — one JSON object per :meth:`RunLogger.scalars` call,
  ``{"step": int, "time": float (unix seconds, 3 decimals), <key>: float | null, ...}``. Non-finite values are
  written as ``null`` (JSON has no portable NaN/Inf).
* ``events.out.tfevents.*`` — TensorBoard event files written straight into ``logdir`` (no sub-directory). The tag of
  a scalar is its key unchanged (``train/loss/rec``, ``eval_return``, ...). Non-finite scalars are not written to
  TensorBoard; they are counted in :attr:`RunLogger.nonfinite_dropped`.

Resuming a run: pass ``metrics_offset`` (the :meth:`RunLogger.jsonl_offset` saved with the checkpoint) to drop the
jsonl rows written after the checkpoint, and ``purge_step`` (the checkpoint's step) so that TensorBoard hides the
events with ``step >= purge_step`` that the interrupted run wrote to its older event files.

Images are PNG and videos animated GIF (Pillow), both as ``Summary.Image`` protobufs: the TensorBoard image dashboard
shows the GIFs animated.
"""
from __future__ import annotations

import io
import json
import math
import os
import time

import numpy as np

__all__ = ["RunLogger"]

_RESERVED = ("step", "time")


def _check_tag(tag) -> None:
    if not isinstance(tag, str) or not tag:
        raise ValueError(f"tag: expected a non-empty str, got {tag!r}")


def _check_uint8(name: str, array, ndim: int, layout: str) -> None:
    """Raise ValueError naming ``name`` unless ``array`` is a uint8 ndarray of ``ndim`` dims, last dim 3, none empty."""
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray {layout} uint8, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8 ({layout}), got {array.dtype}")
    if array.ndim != ndim or array.shape[-1] != 3 or 0 in array.shape:
        raise ValueError(f"{name}: expected shape {layout} (RGB, non-empty), got {tuple(array.shape)}")


def encode_png(image: np.ndarray) -> bytes:
    """``image[H, W, 3]`` uint8 -> PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def encode_gif(frames: np.ndarray, fps: int) -> bytes:
    """``frames[T, H, W, 3]`` uint8 -> looping animated GIF bytes (``round(1000 / fps)`` ms per frame).

    Each frame is quantised to its own 256-colour palette. Pillow merges consecutive identical frames into one longer
    frame, so the GIF can hold fewer than T frames (the total duration is unchanged).
    """
    from PIL import Image

    images = [Image.fromarray(np.ascontiguousarray(f), "RGB") for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(1, round(1000 / fps)), loop=0)
    return buf.getvalue()


class RunLogger:
    """Scalars to ``logdir/metrics.jsonl`` (+ TensorBoard), images and videos to TensorBoard.

    Args:
        logdir: run directory (created if missing).
        tensorboard: also write TensorBoard event files into ``logdir``.
        purge_step: TensorBoard only — events with ``step >= purge_step`` in older event files of ``logdir`` are
            hidden by TensorBoard (a resume marker is written first in the new event file).
        metrics_offset: truncate ``metrics.jsonl`` to this many bytes before appending (resume). ValueError if it is
            negative or larger than the file.
    """

    def __init__(self, logdir: str, tensorboard: bool = True, purge_step: int | None = None,
                 metrics_offset: int | None = None):
        if not isinstance(logdir, (str, os.PathLike)) or not str(logdir):
            raise ValueError(f"logdir: expected a non-empty path, got {logdir!r}")
        if purge_step is not None and (isinstance(purge_step, bool) or not isinstance(purge_step, (int, np.integer))
                                       or purge_step < 0):
            raise ValueError(f"purge_step: expected a non-negative int or None, got {purge_step!r}")
        self.logdir = str(logdir)
        os.makedirs(self.logdir, exist_ok=True)
        self.path = os.path.join(self.logdir, "metrics.jsonl")
        if metrics_offset is not None:
            self._truncate(metrics_offset)
        self.nonfinite_dropped = 0
        self._closed = False
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(self.logdir, purge_step=None if purge_step is None else int(purge_step),
                                         flush_secs=30)

    def _truncate(self, offset) -> None:
        if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"metrics_offset: expected a non-negative int, got {offset!r}")
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        if offset > size:
            raise ValueError(f"metrics_offset: {offset} is larger than {self.path} ({size} bytes)")
        if offset == size:
            return
        with open(self.path, "r+b") as f:
            f.truncate(int(offset))
            f.flush()
            os.fsync(f.fileno())

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"RunLogger({self.logdir!r}) is closed")

    # ------------------------------------------------------------------ writing
    def scalars(self, step: int, values: dict) -> None:
        """Append one jsonl row ``{"step", "time", **values}`` and write each finite value to TensorBoard.

        ``values``: ``{key: float-like}`` (Python/numpy numbers or 0-d tensors). Keys ``"step"``/``"time"`` are
        reserved. Non-finite values become ``null`` in the jsonl and are skipped (and counted) for TensorBoard.
        """
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"step: expected an int, got {step!r}")
        if not isinstance(values, dict):
            raise ValueError(f"values: expected a dict of str -> float, got {type(values).__name__}")
        row = {"step": int(step), "time": round(time.time(), 3)}
        finite = {}
        for key, v in values.items():
            if not isinstance(key, str) or not key or key in _RESERVED:
                raise ValueError(f"values: bad key {key!r} (non-empty str other than 'step'/'time' required)")
            try:
                x = float(v)
            except (TypeError, ValueError) as e:
                raise ValueError(f"values[{key!r}]: not convertible to float ({e})") from None
            if math.isfinite(x):
                row[key] = finite[key] = x
            else:
                row[key] = None
                self.nonfinite_dropped += 1
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        if self._writer is not None:
            for key, x in finite.items():
                self._writer.add_scalar(key, x, int(step))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Write ``image[H, W, 3]`` (uint8 RGB) as a PNG image summary (TensorBoard only; no-op without it)."""
        self._check_open()
        _check_tag(tag)
        _check_uint8("image", image, 3, "[H, W, 3]")
        if self._writer is not None:
            h, w = image.shape[:2]
            self._add_image(tag, h, w, encode_png(image), step)

    def video(self, step: int, tag: str, frames: np.ndarray, fps: int = 15) -> None:
        """Write ``frames[T, H, W, 3]`` (uint8 RGB) as a looping animated-GIF image summary (TensorBoard only).

        See :func:`encode_gif` (identical consecutive frames are merged)."""
        self._check_open()
        _check_tag(tag)
        _check_uint8("frames", frames, 4, "[T, H, W, 3]")
        if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps < 1:
            raise ValueError(f"fps: expected a positive int, got {fps!r}")
        if self._writer is not None:
            h, w = frames.shape[1:3]
            self._add_image(tag, h, w, encode_gif(frames, int(fps)), step)

    def _add_image(self, tag: str, height: int, width: int, encoded: bytes, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        img = Summary.Image(height=int(height), width=int(width), colorspace=3, encoded_image_string=encoded)
        summary = Summary(value=[Summary.Value(tag=tag, image=img)])
        # SummaryWriter has no public call for a ready-made Summary; _get_file_writer() is what its add_* use.
        self._writer._get_file_writer().add_summary(summary, int(step))

    # ------------------------------------------------------------------ lifecycle
    def flush(self) -> None:
        """Flush (and fsync) ``metrics.jsonl`` and flush the TensorBoard writer."""
        self._check_open()
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._writer is not None:
            self._writer.flush()

    def jsonl_offset(self) -> int:
        """Byte size of ``metrics.jsonl`` after flushing: save it with a checkpoint, pass it back as
        ``metrics_offset`` on resume."""
        self.flush()
        return os.fstat(self._file.fileno()).st_size

    def close(self) -> None:
        """Flush and close everything; calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
            if self._writer is not None:
                self._writer.close()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
