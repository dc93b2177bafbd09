"""CLI generated from the config dataclasses."""
import dataclasses
import os
import subprocess
import sys

import pytest

from dreamer_ext import cli
from dreamer_ext.config import PRESETS, Config, iter_leaves

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("env", "preset", "steps", "logdir", "seed", "device", "eval_every", "eval_episodes")


def test_every_field_is_an_option_with_help_and_default():
    cfg = Config()
    text = " ".join(cli.build_parser(cfg, prog="prog").format_help().split())  # undo line wrapping
    leaves = list(iter_leaves(cfg))
    assert len(leaves) > 50
    for name, f, value in leaves:
        assert f"--{name}" in text, name
        assert " ".join(f.metadata["help"].split()) in text, name
    for name in REQUIRED:
        assert f"--{name} " in text
    assert "deterministic state size h (block GRU width) (default: 2048)" in text


def test_both_spellings_dotted_bools_tuples():
    cfg = cli.parse(["--rssm.deter=1024", "--rssm.hidden", "128", "--seed", "3", "--replay_online=false",
                     "--encoder.cnn_mults", "1,2,3,4", "--env", "CartPole-v1", "--train_ratio=32", "--steps=1e3"])
    assert cfg.rssm.deter == 1024 and cfg.rssm.hidden == 128 and cfg.seed == 3
    assert cfg.replay_online is False and cfg.encoder.cnn_mults == (1, 2, 3, 4)
    assert cfg.env == "CartPole-v1" and cfg.train_ratio == 32.0 and cfg.steps == 1000
    assert isinstance(cfg.steps, int) and isinstance(cfg.train_ratio, float)
    assert cli.parse(["--replay_online"]).replay_online is True
    assert cli.parse(["--replay_online=true"]).replay_online is True


def test_preset_applied_first_then_overrides():
    cfg = cli.parse(["--rssm.deter=1024", "--preset=size1m"])
    assert cfg.preset == "size1m"
    assert cfg.rssm.deter == 1024  # the override wins although it came first
    assert cfg.rssm.hidden == PRESETS["size1m"]["hidden"]
    assert cfg.encoder.cnn_depth == PRESETS["size1m"]["depth"]
    default = cli.parse([])
    assert dataclasses.asdict(default) == dataclasses.asdict(Config().validate())


@pytest.mark.parametrize("argv, option", [
    (["--no_such_flag=1"], "--no_such_flag"),
    (["--rssm.deter=abc"], "--rssm.deter"),
    (["--batch_size=0"], "--batch_size"),
    (["--preset=size3m"], "--preset"),
    (["--rssm.deter=100"], "--rssm.deter"),  # not divisible by rssm.blocks: fails validate()
    (["--replay_online=maybe"], "--replay_online"),
    (["--rssm.dete=5"], "--rssm.dete"),  # no prefix abbreviations
    (["--device=tpu"], "--device"),
    (["--train_ratio=nan"], "--train_ratio"),  # accepted before: the run silently never trained
    (["--train_ratio=inf"], "--train_ratio"),
    (["--loss.rep=-inf"], "--loss.rep"),
    (["--steps=1.5"], "--steps"),
    (["--seed=-1"], "--seed"),  # gymnasium refuses negative seeds at reset
    (["--replay_capacity=63"], "--replay_capacity"),  # below batch_size * batch_length: training never starts
    (["--objective=repox"], "--objective"),
    (["--distractor=gauss"], "--distractor"),
    (["--eval_distractor=video:x"], "--eval_distractor"),
    (["--objective=repo", "--repo.eps=200"], "--repo.eps"),  # above stoch * ln(classes)
    (["--encoder.kernel=4"], "--encoder.kernel"),
])
def test_errors_exit_2_with_one_line_naming_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_or_exit(argv, prog="prog")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error:") and option in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_train_program_cli_in_subprocess():
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = lambda *a: subprocess.run([sys.executable, "-m", "dreamer_ext.train", *a], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=120)
    bad = run("--rssm.deter", "7", "--steps=10")
    assert bad.returncode == 2 and "--rssm.deter" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    bad_env = run("--env=NoSuchEnv-v0", "--preset=size1m", "--logdir=/nonexistent/never")
    assert bad_env.returncode == 2 and "--env" in bad_env.stderr and "Traceback" not in bad_env.stderr
    helped = run("--help")
    assert helped.returncode == 0
    for name in REQUIRED:
        assert f"--{name}" in helped.stdout
    assert "env steps" in helped.stdout and "summed over" in helped.stdout


def test_repo_objective_and_distractors_parse():
    cfg = cli.parse_or_exit(["--objective=repo", "--repo.eps=5", "--distractor=gauss:20", "--eval_distractor=video:3"],
                            prog="prog")
    assert cfg.objective == "repo" and cfg.repo.eps == 5.0
    assert cfg.distractor == "gauss:20" and cfg.eval_distractor == "video:3"
