"""RunLogger (metrics.jsonl + TensorBoard events, PNG images, GIF videos)."""
import io
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("tensorboard")
PIL_Image = pytest.importorskip("PIL.Image")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from dreamer_ext.runlog import RunLogger  # noqa: E402


def load_events(logdir, purge=True):
    ea = EventAccumulator(logdir, size_guidance={"scalars": 0, "images": 0}, purge_orphaned_data=purge)
    ea.Reload()
    return ea


def read_rows(logdir):
    with open(os.path.join(logdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def rgb(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------- scalars
def test_scalars_jsonl_and_tensorboard(tmp_path):
    d = str(tmp_path)
    with RunLogger(d) as log:
        log.scalars(0, {"train/loss/rec": 1.5, "eval_return": np.float32(2.25)})
        log.scalars(10, {"train/loss/rec": torch.tensor(0.5), "updates_per_s": 7})
    rows = read_rows(d)
    assert [r["step"] for r in rows] == [0, 10]
    assert rows[0]["train/loss/rec"] == 1.5 and rows[0]["eval_return"] == 2.25
    assert rows[1]["updates_per_s"] == 7.0 and isinstance(rows[1]["time"], float)
    assert rows[1]["time"] == round(rows[1]["time"], 3)
    ea = load_events(d)
    assert set(ea.Tags()["scalars"]) == {"train/loss/rec", "eval_return", "updates_per_s"}
    assert [(e.step, e.value) for e in ea.Scalars("train/loss/rec")] == [(0, 1.5), (10, 0.5)]
    assert [(e.step, e.value) for e in ea.Scalars("eval_return")] == [(0, 2.25)]


def test_no_tensorboard_writes_only_jsonl(tmp_path):
    with RunLogger(str(tmp_path), tensorboard=False) as log:
        log.scalars(1, {"a": 1.0})
        log.image(1, "img", rgb((4, 4, 3)))          # validated, then a no-op
        with pytest.raises(ValueError, match="image"):
            log.image(1, "img", np.zeros((4, 4, 3), np.float32))
    assert os.listdir(tmp_path) == ["metrics.jsonl"]
    assert read_rows(str(tmp_path))[0]["a"] == 1.0


def test_nonfinite_values_become_null_and_skip_tensorboard(tmp_path):
    d = str(tmp_path)
    with RunLogger(d) as log:
        log.scalars(3, {"a": float("nan"), "b": float("inf"), "c": 1.0})
        log.scalars(4, {"a": 2.0})
        assert log.nonfinite_dropped == 2
    with open(os.path.join(d, "metrics.jsonl")) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["a"] is None and rows[0]["b"] is None and rows[0]["c"] == 1.0
    ea = load_events(d)
    assert [e.step for e in ea.Scalars("a")] == [4]
    assert "b" not in ea.Tags()["scalars"]


def test_bad_scalar_arguments(tmp_path):
    with RunLogger(str(tmp_path), tensorboard=False) as log:
        with pytest.raises(ValueError, match="step"):
            log.scalars(1.5, {"a": 1.0})
        with pytest.raises(ValueError, match="values"):
            log.scalars(1, {"step": 1.0})
        with pytest.raises(ValueError, match=r"values\['a'\]"):
            log.scalars(1, {"a": "x"})


# ---------------------------------------------------------------------- media
def test_image_summary(tmp_path):
    d = str(tmp_path)
    img = rgb((12, 20, 3))
    with RunLogger(d) as log:
        log.image(5, "recon/image", img)
    ea = load_events(d)
    assert ea.Tags()["images"] == ["recon/image"]
    (ev,) = ea.Images("recon/image")
    assert (ev.step, ev.width, ev.height) == (5, 20, 12)
    back = np.asarray(PIL_Image.open(io.BytesIO(ev.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(back, img)   # PNG is lossless
    assert read_rows(d) == []                   # images never go to the jsonl


def test_video_summary_is_an_animated_gif(tmp_path):
    d = str(tmp_path)
    T = 6
    frames = rgb((T, 8, 10, 3), seed=1)
    with RunLogger(d) as log:
        log.video(7, "policy/video", frames, fps=10)
    (ev,) = load_events(d).Images("policy/video")
    assert (ev.step, ev.width, ev.height) == (7, 10, 8)
    data = ev.encoded_image_string
    assert data.startswith(b"GIF89a")
    gif = PIL_Image.open(io.BytesIO(data))
    assert gif.n_frames == T and gif.info.get("loop") == 0 and gif.info.get("duration") == 100
    gif.seek(T - 1)
    assert gif.convert("RGB").size == (10, 8)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8),
                                 torch.zeros(4, 4, 3, dtype=torch.uint8)])
def test_bad_image_raises(tmp_path, bad):
    with RunLogger(str(tmp_path)) as log:
        with pytest.raises(ValueError, match="image"):
            log.image(0, "x", bad)


def test_bad_video_raises(tmp_path):
    with RunLogger(str(tmp_path)) as log:
        with pytest.raises(ValueError, match="frames"):
            log.video(0, "v", np.zeros((4, 4, 3), np.uint8))
        with pytest.raises(ValueError, match="frames"):
            log.video(0, "v", np.zeros((2, 4, 4, 3), np.int16))
        with pytest.raises(ValueError, match="fps"):
            log.video(0, "v", np.zeros((2, 4, 4, 3), np.uint8), fps=0)
        with pytest.raises(ValueError, match="tag"):
            log.image(0, "", np.zeros((4, 4, 3), np.uint8))


# ---------------------------------------------------------------------- resume
def test_purge_step_hides_orphaned_events(tmp_path):
    d = str(tmp_path)
    with RunLogger(d) as log:
        for s in range(11):
            log.scalars(s, {"x": float(s)})
        log.image(8, "img", rgb((4, 4, 3)))
    with RunLogger(d, purge_step=5) as log:
        log.scalars(5, {"x": 105.0})
        log.scalars(6, {"x": 106.0})
    got = [(e.step, e.value) for e in load_events(d).Scalars("x")]
    assert got == [(s, float(s)) for s in range(5)] + [(5, 105.0), (6, 106.0)]
    assert load_events(d).Images("img") == []   # the step-8 image of the first run is purged too
    # without purging (or without purge_step) the old steps would still be there
    raw = [e.step for e in load_events(d, purge=False).Scalars("x")]
    assert raw.count(5) == 2 and 10 in raw


def test_metrics_offset_truncates(tmp_path):
    d = str(tmp_path)
    with RunLogger(d, tensorboard=False) as log:
        log.scalars(0, {"a": 0.0})
        log.scalars(1, {"a": 1.0})
        offset = log.jsonl_offset()
        assert offset == os.path.getsize(os.path.join(d, "metrics.jsonl"))
        log.scalars(2, {"a": 2.0})            # written after the "checkpoint"
        assert log.jsonl_offset() > offset
    with RunLogger(d, tensorboard=False, metrics_offset=offset) as log:
        assert log.jsonl_offset() == offset
        log.scalars(2, {"a": 20.0})
    assert [(r["step"], r["a"]) for r in read_rows(d)] == [(0, 0.0), (1, 1.0), (2, 20.0)]
    size = os.path.getsize(os.path.join(d, "metrics.jsonl"))
    with pytest.raises(ValueError, match="metrics_offset"):
        RunLogger(d, tensorboard=False, metrics_offset=size + 1)
    with pytest.raises(ValueError, match="metrics_offset"):
        RunLogger(d, tensorboard=False, metrics_offset=-1)
    assert os.path.getsize(os.path.join(d, "metrics.jsonl")) == size   # a refused offset changes nothing


def test_metrics_offset_zero_on_fresh_dir(tmp_path):
    with RunLogger(str(tmp_path / "new"), tensorboard=False, metrics_offset=0) as log:
        assert log.jsonl_offset() == 0


def test_close_is_idempotent_and_final(tmp_path):
    log = RunLogger(str(tmp_path))
    log.scalars(0, {"a": 1.0})
    log.close()
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.scalars(1, {"a": 1.0})
    assert read_rows(str(tmp_path))[0]["a"] == 1.0
