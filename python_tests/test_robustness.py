"""The robustness experiment (python -m dreamer_ext.robustness) on a tiny budget: every cell trained and evaluated on
every eval distractor, the table's format, and resume (finished cells and saved evaluations are not redone)."""
import csv
import json
import os

import pytest

from dreamer_ext import robustness
from test_distractors import SpriteEnv  # noqa: F401 (registers DistractorTestSprite-v0)

pytestmark = pytest.mark.slow

TINY = ["--preset=size1m", "--rssm.deter=32", "--rssm.hidden=16", "--rssm.stoch=4", "--rssm.classes=4", "--rssm.blocks=4",
        "--encoder.cnn_depth=2", "--decoder.cnn_depth=2", "--decoder.bspace=0", "--heads.units=16", "--actor.units=16",
        "--critic.units=16", "--actor.layers=1", "--critic.layers=1", "--imag.horizon=3", "--batch_size=2",
        "--batch_length=8", "--train_ratio=8", "--steps=120", "--eval_every=0", "--checkpoint_every=0",
        "--tensorboard=false", "--media_every=0", "--device=cpu", "--log_every=60", "--optim.warmup=1"]


def experiment(tmp_path, *extra):
    return robustness.parse(["--env=DistractorTestSprite-v0", "--objectives=dreamer,repo", "--train=none,gauss:20",
                             "--eval=none,blackout:0.5", "--episodes=2", f"--out={tmp_path}", *extra, *TINY,
                             "--repo.eps=1.5"])


def test_experiment_table_and_resume(tmp_path, monkeypatch):
    ns, rest = experiment(tmp_path)
    lines = []
    rows = robustness.run(ns, rest, log=lines.append)
    assert len(rows) == 2 * 2 * 2
    assert sum("training" in l for l in lines) == 4 and "ETA" in lines[1]
    for o in ("dreamer", "repo"):
        for t in ("none", "gauss20"):
            d = tmp_path / o / f"train-{t}" / "seed0"
            assert json.loads((d / "cell.json").read_text())["steps"] == 120
            for e in ("none", "blackout0.5"):
                res = json.loads((d / f"eval-{e}.json").read_text())
                assert len(res["returns"]) == 2 and res["distractor"] == e.replace("blackout0.5", "blackout:0.5")
    md = (tmp_path / "table.md").read_text()
    assert "**dreamer**" in md and "**repo**" in md and "| train \\ eval | none | blackout:0.5 |" in md
    assert "| gauss:20 | " in md and " ± " in md
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {r["objective"] for r in table} == {"dreamer", "repo"}
    assert all(int(r["episodes"]) == 2 for r in table)
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run trains nothing and evaluates nothing again
    calls = []
    monkeypatch.setattr(robustness, "train_cell", lambda *a: calls.append("train"))
    import dreamer_ext.evaluate as ev
    monkeypatch.setattr(ev, "evaluate_checkpoint", lambda *a: calls.append("eval"))
    lines.clear()
    again = robustness.run(ns, rest, log=lines.append)
    assert calls == [] and again == rows
    assert all("finished, evaluating" in l for l in lines[:4])


def test_an_interrupted_cell_resumes_from_its_checkpoint(tmp_path):
    ns, rest = robustness.parse(["--env=DistractorTestSprite-v0", "--objectives=repo", "--train=video:1",
                                 "--eval=none", "--episodes=1", f"--out={tmp_path}", *TINY, "--repo.eps=1.5"])
    d = robustness.cell_dir(ns, "repo", "video:1", 0)
    # a half-done run: its own checkpoint at 60 steps, no cell.json
    from dreamer_ext.train import parse_args, train
    cfg, _ = parse_args(["--env=DistractorTestSprite-v0", "--objective=repo", "--distractor=video:1", f"--logdir={d}",
                         *[a for a in TINY if not a.startswith("--steps")], "--steps=60", "--repo.eps=1.5"])
    train(cfg)
    assert not os.path.exists(os.path.join(d, "cell.json"))
    lines = []
    robustness.run(ns, rest, log=lines.append)
    assert json.loads(open(os.path.join(d, "cell.json")).read())["steps"] == 120
    from dreamer_ext.checkpoint import list_checkpoints
    assert [s for s, _ in list_checkpoints(d)][-1] == 120


@pytest.mark.parametrize("argv, option", [(["--objectives=dreamer,foo"], "--objectives"), (["--train=gauss:x"], "--train"),
                                          (["--eval="], "--eval"), (["--episodes=0"], "--episodes"),
                                          (["--seed=3"], "--seed"), (["--train=none,gauss:0"], "--train")])
def test_bad_options_name_themselves(argv, option, capsys):
    assert robustness.main(["--env=DistractorTestSprite-v0", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{robustness.PROG}: error: {option}") and "\n" not in err
