"""Data-parallel updates (dreamer_ext/dist.py, Agent.use_dist) with 2 gloo processes launched by torchrun: parameters,
buffers and metrics are bitwise equal on both ranks after several updates on different batches, a non-finite batch
on one rank skips the update on both, and RePo's beta moves the same way everywhere."""
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

WORKER = textwrap.dedent("""
    import os, sys
    import torch
    sys.path[:0] = [{root!r}, {here!r}]
    from dreamer_ext.agent import Agent
    from dreamer_ext.dist import from_env
    from tiny_agent_config import random_batch, tiny_config, vector_spec

    d = from_env(torch.device("cpu"))
    torch.manual_seed(100 + d.rank)  # different initial parameters on purpose: use_dist makes them rank 0's
    spec = vector_spec()
    agent = Agent(tiny_config(objective={objective!r}, precision="fp32"), spec)
    built = [p.detach().clone() for p in agent.parameters()]
    agent.use_dist(d)
    start = [p.detach().clone() for p in agent.parameters()]
    metrics = []
    for i in range(3):
        batch = random_batch(spec, seed=10 * i + d.rank)  # each rank its own batch
        if i == 1 and d.rank == 1:
            batch["reward"][0, 1] = float("nan")  # one rank's bad batch skips the update everywhere
        torch.manual_seed(1000 * i + d.rank)
        metrics.append(agent.train_step(batch))
    torch.save({{"params": [p.detach() for p in agent.parameters()], "buffers": [b for b in agent.buffers()],
                "built": built, "start": start, "metrics": metrics}}, os.path.join({out!r}, f"rank{{d.rank}}.pt"))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(tmp_path, objective, worker=WORKER):
    """Run ``worker`` (a template) on 2 gloo ranks; returns what each rank saved to ``rank<r>.pt``."""
    script = tmp_path / "worker.py"
    script.write_text(worker.format(root=ROOT, here=HERE, out=str(tmp_path), objective=objective))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                           f"--master_port={free_port()}", str(script)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("objective", ["dreamer", "repo"])
def test_two_ranks_stay_bitwise_equal(tmp_path, objective):
    r0, r1 = run_two_ranks(tmp_path, objective)
    assert any(not torch.equal(a, b) for a, b in zip(r0["built"], r1["built"]))  # they were built differently
    assert all(torch.equal(a, b) for a, b in zip(r0["built"], r1["start"]))  # and start from rank 0's
    assert all(torch.equal(a, b) for a, b in zip(r0["params"], r1["params"]))
    assert all(torch.equal(a, b) or (a.isnan().all() and b.isnan().all()) for a, b in zip(r0["buffers"], r1["buffers"]))
    assert any(not torch.equal(a, b) for a, b in zip(r0["start"], r0["params"]))  # and they did learn
    m0, m1 = r0["metrics"], r1["metrics"]
    assert [m["opt/skipped"] for m in m0] == [m["opt/skipped"] for m in m1] == [0.0, 1.0, 0.0]
    for a, b in zip(m0, m1):
        assert a.keys() == b.keys()
        assert all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)  # averaged metrics (NaN where skipped)
    if objective == "repo":
        assert m0[2]["repo/beta_after"] == m1[2]["repo/beta_after"]


EQUIV_WORKER = textwrap.dedent("""
    import os, sys
    import torch
    sys.path[:0] = [{root!r}, {here!r}]
    from dreamer_ext.dist import from_env
    from equivalence import float64_updates

    d = from_env(torch.device("cpu"))
    params = float64_updates({objective!r}, d, rows=slice(2 * d.rank, 2 * d.rank + 2))
    torch.save(params, os.path.join({out!r}, f"rank{{d.rank}}.pt"))
""")


@pytest.mark.parametrize("objective", ["dreamer", "repo"])
def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b_in_float64(tmp_path, objective):
    """Randomness is keyed by the global batch row (one Philox key per update, broadcast from rank 0), every loss is a
    mean over equally many elements per rank, and the return percentiles are taken over the gathered returns: so
    averaging the gradients of 2 ranks × 2 rows gives the update of 1 process × 4 rows, up to float64 rounding."""
    from dreamer_ext.dist import SINGLE
    from equivalence import float64_updates

    ranks = run_two_ranks(tmp_path, objective, EQUIV_WORKER)
    one = float64_updates(objective, SINGLE, rows=slice(0, 4))
    start = float64_updates(objective, SINGLE, rows=slice(0, 4), updates=0)
    assert all(torch.equal(a, b) for a, b in zip(ranks[0], ranks[1]))
    moved = max(float((a - s).abs().max()) for a, s in zip(one, start))
    assert moved > 5e-5  # three LaProp steps of lr 4e-5 moved the parameters
    worst = max(float((a - b).abs().max()) for a, b in zip(ranks[0], one))
    assert worst < 1e-10 * moved, worst  # equal up to float64 rounding
    half = float64_updates(objective, SINGLE, rows=slice(0, 2))  # what rank 0 alone would have learned
    assert max(float((a - b).abs().max()) for a, b in zip(half, one)) > 1e-4 * moved


def test_single_process_is_untouched():
    from dreamer_ext.dist import SINGLE, from_env
    assert from_env(torch.device("cpu")) is SINGLE and not SINGLE.active
    t = torch.arange(4.0)
    SINGLE.average_([t])
    assert torch.equal(t, torch.arange(4.0)) and SINGLE.all_true(True) and not SINGLE.all_true(False)
    assert torch.equal(SINGLE.gather_cat(t), t)


TINY_RUN = ["--env=CartPole-v1", "--preset=size1m", "--rssm.deter=32", "--rssm.hidden=16", "--rssm.stoch=4",
            "--rssm.classes=4", "--rssm.blocks=4", "--encoder.mlp_units=16", "--decoder.mlp_units=16",
            "--heads.units=16", "--actor.units=16", "--critic.units=16", "--batch_size=2", "--batch_length=8",
            "--train_ratio=16", "--eval_every=0", "--tensorboard=false", "--device=cpu", "--log_every=100",
            "--precision=fp32"]


def torchrun_train(tmp_path, nproc, *args, extra_env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **(extra_env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "dreamer_ext.train",
                           *TINY_RUN, f"--logdir={tmp_path / 'run'}", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def test_torchrun_training_counts_global_steps_checkpoints_shards_and_resumes(tmp_path):
    import json
    from dreamer_ext.checkpoint import list_checkpoints, load_checkpoint
    p = torchrun_train(tmp_path, 2, "--steps=240", "--checkpoint_every=120")
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "run"
    assert p.stdout.count("done: steps=240") == 1  # rank 0 prints, once; the steps are global
    assert "data parallel: 2 process(es), gloo; global batch 4 x 8" in p.stdout
    main = load_checkpoint(str(run))
    assert main["step"] == 240 and main["dist"] == {"rank": 0, "world": 2}
    assert main["train_state"]["step"] == 240
    # the train ratio is global: replayed steps (updates x batch 2 x length 8 x 2 ranks) = 16 x the env steps after
    # the first batch's worth was stored (16 steps per rank, 32 in all)
    replayed = main["train_state"]["updates"] * 2 * 8 * 2
    assert abs(replayed - 16 * (240 - 32)) <= 2 * 8 * 2
    shard = load_checkpoint(str(run / "rank1"))
    assert shard["step"] == 240 and shard["dist"]["rank"] == 1 and shard["agent"] == {}
    assert [s for s, _ in list_checkpoints(str(run / "rank1"))] == [120, 240]  # keep 2 (+1 for a shard)
    assert not (run / "rank1" / "metrics.jsonl").exists()
    rows = [json.loads(l) for l in open(run / "metrics.jsonl")]
    eps = [r for r in rows if "episode_return" in r]
    assert len(eps) == main["train_state"]["episodes"] > 4  # both ranks' episodes, logged once by rank 0
    # each rank's shard holds its own 120 env steps, with half the replay capacity
    for ck in (main, shard):
        assert ck["replay"]["state"]["inserted"] == 120
        assert ck["replay"]["state"]["capacity"] == ck["config"]["replay_capacity"] // 2
    # resume with the same world size continues to 360
    p = torchrun_train(tmp_path, 2, "--steps=360", "--checkpoint_every=120", "--resume=true")
    assert p.returncode == 0, p.stderr[-3000:]
    assert load_checkpoint(str(run))["step"] == 360 and load_checkpoint(str(run / "rank1"))["step"] == 360
    # another world size: 2 -> 1 deals both shards' replays to the one process, which continues to 480
    before = sum(load_checkpoint(str(d))["replay"]["state"]["size"] for d in (run, run / "rank1"))
    p = torchrun_train(tmp_path, 1, "--steps=480", "--checkpoint_every=120", "--resume=true")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "written by 2 process(es), this run has 1" in p.stdout
    one = load_checkpoint(str(run))
    assert one["step"] == 480 and one["dist"] == {"rank": 0, "world": 1}
    # nothing was lost: every stored step of both shards plus the 120 new ones (the capacity is not reached)
    assert one["replay"]["state"]["size"] == before + 120
    assert len(one["replay"]["state"]["streams"]) == 2 * 1 + 1  # both old streams, retired, and the live env's
    # and 1 -> 2 splits it again: each rank gets a share and both continue to 600
    p = torchrun_train(tmp_path, 2, "--steps=600", "--checkpoint_every=120", "--resume=true")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "written by 1 process(es), this run has 2" in p.stdout
    main, shard = load_checkpoint(str(run)), load_checkpoint(str(run / "rank1"))
    assert main["step"] == shard["step"] == 600 and main["dist"]["world"] == 2
    sizes = [ck["replay"]["state"]["size"] - 60 for ck in (main, shard)]  # less each rank's 60 new steps
    assert sum(sizes) == before + 120 and min(sizes) > 0


def test_a_group_of_one_runs_every_collective(tmp_path, monkeypatch):
    """DREAMER_EXT_DIST=1 under a one-process torchrun: the collectives run (the NCCL smoke run of a one-GPU machine
    is this with --device=cuda, test_gpu.py); the run trains, checkpoints and resumes like a single process."""
    from dreamer_ext.checkpoint import load_checkpoint
    p = torchrun_train(tmp_path, 1, "--steps=120", "--checkpoint_every=60", extra_env={"DREAMER_EXT_DIST": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    ck = load_checkpoint(str(tmp_path / "run"))
    assert ck["step"] == 120 and ck["dist"] == {"rank": 0, "world": 1}
    assert ck["train_state"]["updates"] > 0
    assert "data parallel: 1 process(es), gloo" in p.stdout  # a group of one: the collectives ran
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("DREAMER_EXT_DIST", "0")
    from dreamer_ext.dist import SINGLE, from_env
    assert from_env(torch.device("cpu")) is SINGLE  # without the switch a one-process torchrun is a plain run


def test_a_killed_rank_takes_the_job_down_and_resume_recovers(tmp_path):
    import signal
    import time
    from dreamer_ext.checkpoint import list_checkpoints, load_checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                             "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "dreamer_ext.train",
                             *TINY_RUN, f"--logdir={run}", "--steps=100000", "--checkpoint_every=60"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list_checkpoints(str(run)):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.5)
        assert list_checkpoints(str(run)), "no checkpoint within 240 s"
        pid = int((run / "rank1" / ".lock").read_text())  # the rank-1 process holds its shard's lock
        os.kill(pid, signal.SIGKILL)
        rc = proc.wait(timeout=120)  # the whole job stops: no rank hangs in a collective
        assert rc != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = list_checkpoints(str(run))[-1][0]
    p = torchrun_train(tmp_path, 2, f"--steps={last + 60}", "--checkpoint_every=60", "--resume=true")
    assert p.returncode == 0, p.stderr[-3000:]
    assert load_checkpoint(str(run))["step"] == last + 60 == load_checkpoint(str(run / "rank1"))["step"]
