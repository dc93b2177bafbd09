"""The training program as a new user meets it: every bad input or run-time failure is one line on stderr naming
what is wrong (exit 2 for the command line, 1 at run time), never a traceback; and the run-time projection."""
import pytest

from dreamer_ext import train as train_mod
from test_checkpoint import TINY


def run_main(capsys, *args):
    rc = train_mod.main(["--env=CartPole-v1", *TINY, *args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err):
    """Exactly one error line, on a line of its own (the progress bar shares stderr), and no traceback."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "error:" in ln]
    return len(lines) == 1 and lines[0].startswith(train_mod.PROG + ": error: ") and "Traceback" not in err


def test_logdir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    rc, _, err = run_main(capsys, f"--logdir={f}", "--steps=50")
    assert rc == 1 and one_line(err) and f"--logdir={f}" in err and "not a directory" in err


def test_logdir_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = blocker / "sub" / "run"  # a parent is a file
    rc, _, err = run_main(capsys, f"--logdir={bad}", "--steps=50")
    assert rc == 1 and one_line(err) and f"--logdir={bad}" in err and "cannot create" in err


def test_error_inside_the_loop_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    from dreamer_ext.agent import Agent

    def broken(self, batch, return_latents=False):
        raise ValueError("batch['reward']: something went wrong")

    monkeypatch.setattr(Agent, "train_step", broken)
    rc, _, err = run_main(capsys, f"--logdir={tmp_path / 'run'}", "--steps=200")
    assert rc == 1 and one_line(err) and "ValueError: batch['reward']: something went wrong" in err
    monkeypatch.setenv("DREAMER_EXT_TRACEBACK", "1")  # for debugging: the real exception
    with pytest.raises(ValueError, match="something went wrong"):
        train_mod.main(["--env=CartPole-v1", *TINY, f"--logdir={tmp_path / 'run2'}", "--steps=200"])


def test_long_cpu_run_prints_its_projection_and_practical_commands_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_mod, "LONG_RUN_SECONDS", 0.0)  # any projection counts as long here
    rc, out, _ = run_main(capsys, f"--logdir={tmp_path / 'run'}", "--steps=300")
    assert rc == 0
    assert out.count("note: this run is projected to need") == 1
    assert "updates still owed" in out and "--device=cuda" in out and "--steps=" in out


def test_short_run_prints_no_projection_note(tmp_path, capsys):
    rc, out, _ = run_main(capsys, f"--logdir={tmp_path / 'run'}", "--steps=300")
    assert rc == 0 and "projected to need" not in out


def test_action_repeat_on_a_non_atari_env_is_reported_not_silently_ignored(tmp_path, capsys):
    rc, out, _ = run_main(capsys, f"--logdir={tmp_path / 'run'}", "--steps=20", "--action_repeat=2")
    assert rc == 0 and "--action_repeat=2 applies to ALE/<Game>-v5 envs only" in out
