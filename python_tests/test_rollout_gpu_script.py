"""bench/rollout_gpu.py (the GPU rollout benchmark of bench/gpu_check.sh), run on the CPU at a tiny size: its
table, its MAC count against the model's shapes, and its argument errors."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("rollout_gpu", ROOT / "bench" / "rollout_gpu.py")
rg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rg)


def test_table_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "r.md"
    assert rg.main(["--device", "cpu", "--preset", "size1m", "--n", "3", "--iters", "1", "--no-compile",
                    "--peak-tflops", "1", "--out", str(out)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"
    rows = [ln for ln in text.splitlines() if ln.startswith("| 3 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[3] == "—" and cells[5] == "—"  # no compiled loop
    assert float(cells[6].rstrip(" %")) >= 99.0  # same uniforms: the kernel samples the loop's actions
    assert cells[7] == "0.35 M"
    assert "peak used: 1 TFLOP/s" in text and cells[9].endswith("%")


def test_macs_per_row_step_counts_one_hot_inputs_as_gathers():
    from dreamer_ext.agent import Agent
    from dreamer_ext.config import make_config
    from dreamer_ext.envs.spec import EnvSpec
    from dreamer_ext.fused_rollout import RolloutWeights

    agent = Agent(make_config("size12m", device="cpu", precision="fp32"),
                  EnvSpec(obs={"vector": ((5,), "float32")}, act_dim=17, discrete=True))
    r, actor = agent.wm.rssm, agent.behavior.actor
    D, S, C, Hd, G, U = r.deter, r.S, r.C, r.hidden, r.g, actor.cfg.units
    assert len(actor.mlp) == 3 and len(r.dyn) == 1 and len(r.prior_mlp) == 2
    expect = ((D + S) * U + 2 * U * U + U * 17  # actor: [h, z as S gathered rows], two more layers, logits
              + D * Hd + S * Hd + Hd  # in_h; in_z and in_a as gathers
              + G * (D // G + 3 * Hd) * (D // G)  # dyn: per block [h_i, x] -> block
              + G * (D // G) * (3 * D // G)  # GRU gates r, c, u per block
              + D * Hd + Hd * Hd + Hd * S * C)  # prior MLP and logits
    got = rg.macs_per_row_step(RolloutWeights(r, actor))
    assert got == expect
    assert abs(got - 5.6e6) < 0.05e6  # shared/spec/rollout.md: 5.6 M per row-step at size12m


@pytest.mark.parametrize("argv, msg", [(["--n", "0"], "--n"), (["--n", "a"], "--n"), (["--iters", "0"], "--iters"),
                                       (["--device", "tpu"], "--device")])
def test_bad_arguments_name_the_option(argv, msg, capsys):
    with pytest.raises(SystemExit) as e:
        rg.parse(["--device", "cpu"] + argv if argv[0] != "--device" else argv)
    assert e.value.code == 2 and msg in capsys.readouterr().err
