"""The fused imagination rollout against the model's own PyTorch imagination loop, eager and under torch.compile,
in one run: H = 15 steps from N start states, discrete actions (17), size1m and size12m, float32 and bf16 (the loop
under a bf16 autocast, the kernel with bf16 matmuls). And the fused acting step (``fused_act``: core, posterior
latent, actor through ``ops.ActPlan``, as ``Agent.policy`` calls it) against the same three pieces in PyTorch
(``RSSM.obs_step`` + the actor), at acting batch sizes, in both precisions.

The loop is ``RSSM.imagine`` with ``Behavior.policy_fn`` under ``no_grad``, given the same Philox uniforms as the
kernel (so both compute the same trajectory); "kernel" is ``fused_rollout.fused_imagine``. Ratios (loop time /
kernel time) go into RESULTS.md through bench/report.py:

    pytest bench/test_rollout_bench.py --threads 2 --benchmark-json=bench/rollout.json
    python bench/report.py bench/rollout.json --region rollout-table --out bench/RESULTS.md

Options (bench/conftest.py): --no-compile, --threads N.
"""
import functools
import time

import pytest
import torch

from dreamer_ext import _C
from dreamer_ext.agent import Agent
from dreamer_ext.config import make_config
from dreamer_ext.envs.spec import EnvSpec
from dreamer_ext.fused_rollout import RolloutWeights, fused_act, fused_imagine, rollout_uniforms, z_indices

H, A = 15, 17
IMPLS = ["kernel", "ref_eager", "ref_compile"]
CASES = [(p, n, prec) for prec in ("fp32", "bf16") for p in ("size1m", "size12m") for n in (1, 16, 64, 1024, 4096)]
ACT_CASES = [(p, n, prec) for prec in ("fp32", "bf16") for p in ("size1m", "size12m") for n in (1, 16, 64)]


@functools.lru_cache(maxsize=None)
def _setup(preset, n):
    torch.manual_seed(0)
    spec = EnvSpec(obs={"vector": ((5,), "float32")}, act_dim=A, discrete=True)
    agent = Agent(make_config(preset, device="cpu", precision="fp32"), spec)
    rssm = agent.wm.rssm
    g = torch.Generator().manual_seed(1)
    start = {"h": torch.rand(n, rssm.deter, generator=g) * 2 - 1,
             "z": torch.nn.functional.one_hot(torch.randint(0, rssm.C, (n, rssm.S), generator=g), rssm.C).float()}
    return agent, start, rollout_uniforms(7, n, H, rssm.S, 1)


def _loop(agent, start, uniforms, bf16):
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        return agent.wm.rssm.imagine(agent.behavior.policy_fn, start, H, uniforms)


@functools.lru_cache(maxsize=None)
def _compiled(fn, preset, n, prec):
    return torch.compile(fn, dynamic=False)


def _time(benchmark, fn, group, big):
    fn()  # warm-up (compile, weight packing)
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    # a round of at least ~5 ms: single calls of 20-100 µs would time the clock and the scheduler, not the call
    iterations = max(1, min(1000, int(5e-3 / max(once, 1e-7))))
    benchmark.group = group
    benchmark.extra_info.update(torch=torch.__version__, threads=torch.get_num_threads(), device="cpu",
                                device_name=None, cpu_kernels=_C.build_info().get("cpu_kernels"),
                                iterations=iterations)
    benchmark.pedantic(fn, rounds=3 if big else 10, iterations=iterations, warmup_rounds=0 if big else 1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[1]}-{c[2]}")
def test_rollout(benchmark, with_compile, case, impl):
    preset, n, prec = case
    bf16 = prec == "bf16"
    agent, start, uniforms = _setup(preset, n)
    if impl == "kernel":
        weights = RolloutWeights(agent.wm.rssm, agent.behavior.actor)
        fn = functools.partial(fused_imagine, weights, start, H, 7, bf16)
    elif impl == "ref_eager":
        fn = functools.partial(_loop, agent, start, uniforms, bf16)
    else:
        if not with_compile:
            pytest.skip("--no-compile")
        fn = functools.partial(_compiled(_loop, preset, n, prec), agent, start, uniforms, bf16)
    _time(benchmark, fn, f"rollout {preset} N={n} {prec}", preset == "size12m" and n >= 1024)


def _act_loop(agent, state, prev, embed, is_first, uniforms, bf16=False):
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        rssm = agent.wm.rssm
        post = rssm.obs_step(state, prev, embed, is_first, uniforms["latent"][0])
        return agent.behavior.actor(rssm.feat(post)).sample(uniforms["action"][0]), post


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ACT_CASES, ids=lambda c: f"{c[0]}-N{c[1]}-{c[2]}")
def test_act(benchmark, with_compile, case, impl):
    preset, n, prec = case
    bf16 = prec == "bf16"
    agent, start, _ = _setup(preset, n)
    rssm = agent.wm.rssm
    g = torch.Generator().manual_seed(2)
    embed = torch.randn(n, rssm.embed_dim, generator=g)
    prev = torch.nn.functional.one_hot(torch.randint(0, A, (n,), generator=g), A).float()
    is_first = torch.zeros(n, dtype=torch.bool)
    if impl == "kernel":
        weights = RolloutWeights(rssm, agent.behavior.actor, "post")
        carry = {**start, "action": prev, "z_index": z_indices(start["z"])}  # as Agent.policy's carry holds it
        fn = functools.partial(fused_act, weights, carry, embed, is_first, True, 7, bf16)
    else:
        uniforms = rollout_uniforms(7, n, 1, rssm.S, 1)
        loop = _act_loop if impl == "ref_eager" else _compiled(_act_loop, preset, n, prec)
        if impl == "ref_compile" and not with_compile:
            pytest.skip("--no-compile")
        fn = functools.partial(loop, agent, start, prev, embed, is_first, uniforms, bf16)
    _time(benchmark, fn, f"act {preset} N={n} {prec}", False)
