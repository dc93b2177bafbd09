"""bench/repo_curves.py: the per-interval RePo table of a run directory and the --plot PNG of several runs."""
import importlib.util
import json
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("repo_curves", ROOT / "bench" / "repo_curves.py")
curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(curves)


def fake_run(path: Path, seed: int, betas: list[float], kls: list[float]) -> Path:
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"distractor": "gauss:20", "seed": seed,
                                                   "repo": {"eps": 3.0, "beta_min": 1e-4, "beta_max": 10.0}}))
    with open(path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 0, "episodes": 0}) + "\n")  # a line without RePo metrics is skipped
        for i, (b, kl) in enumerate(zip(betas, kls)):
            f.write(json.dumps({"step": 1024 + 256 * i, "updates": 1 + 64 * i, "train/repo/beta": b,
                                "train/repo/kl_bal": kl, "train/kl/dyn": kl, "train/kl/rep": kl,
                                "train/repo/violation": kl - 3.0, "train/repo/kl_above_eps_frac": float(kl > 3),
                                "train/loss/rew": 5.0 - i, "train/repo/alarms": 0, "skipped_updates": 0}) + "\n")
    return path


def test_table_and_plot(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 0, [1e-3, 1.2e-3, 8e-4], [8.0, 3.5, 0.4])
    b = fake_run(tmp_path / "b", 1, [1e-3, 1.1e-3, 6e-4], [7.5, 2.9, 0.2])
    out = tmp_path / "curves.png"
    assert curves.main(["--plot", str(out), str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "distractor gauss:20, eps 3.0" in text
    assert "beta in [0.0008, 0.0012]; largest model-step term 5" in text  # run a's summary
    assert "beta in [0.0006, 0.0011]" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("1024 1 ")]) == 2  # one row per interval and run
    img = Image.open(out)
    assert img.size[0] > 1000 and img.size[1] > 300
    colours = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
    assert curves.COLOURS[0] in colours and curves.COLOURS[1] in colours  # a curve per run


def test_plot_needs_a_png_name(tmp_path, capsys):
    assert curves.main(["--plot", str(tmp_path / "x.jpg"), str(tmp_path)]) == 2
    assert "--plot" in capsys.readouterr().err
    assert curves.main([]) == 2


def test_a_missing_run_directory_is_named(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 0, [1e-3], [8.0])
    assert curves.main([str(a), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "config.json" in err
