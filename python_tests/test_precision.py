"""bf16 compute (``--precision``): matmuls and convolutions in bf16 with fp32 parameters and optimiser state; norms,
distributions, KL, losses, λ-returns and the return normaliser in fp32; checkpoints load across precisions."""
import io

import pytest
import torch

from dreamer_ext import agent as agent_mod
from dreamer_ext import behavior as behavior_mod
from dreamer_ext import nets
from dreamer_ext.agent import Agent, resolve_precision
from tiny_agent_config import image_vector_spec, random_batch, tiny_config


def test_resolve_precision(monkeypatch):
    cpu = torch.device("cpu")
    real_speedup = agent_mod.cpu_bf16_speedup
    assert resolve_precision("bf16", cpu) == torch.bfloat16 and resolve_precision("fp32", cpu) == torch.float32
    monkeypatch.setattr(agent_mod, "cpu_bf16_speedup", lambda: 2.5)
    assert resolve_precision("auto", cpu) == torch.bfloat16
    monkeypatch.setattr(agent_mod, "cpu_bf16_speedup", lambda: 0.6)  # bf16 present but slower here: fp32
    assert resolve_precision("auto", cpu) == torch.float32
    monkeypatch.setattr(agent_mod, "_BF16_SPEEDUP", None)
    monkeypatch.setattr(agent_mod, "cpu_has_bf16_instructions", lambda: False)
    assert real_speedup() == 0.0  # no bf16 instructions: emulated, never chosen
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", cpu)


def _record_dtypes(agent, monkeypatch):
    seen = {"linear": set(), "conv": set(), "norm_in": set(), "lambda_return": set(), "retnorm": set()}
    agent.wm.rssm.in_h.linear.register_forward_hook(lambda m, i, o: seen["linear"].add(o.dtype))
    agent.wm.encoders["image"].convs[0].register_forward_hook(lambda m, i, o: seen["conv"].add(o.dtype))
    real_rms = nets.F.rms_norm

    def rms(x, *a, **k):
        seen["norm_in"].add(x.dtype)
        return real_rms(x, *a, **k)

    monkeypatch.setattr(nets.F, "rms_norm", rms)
    real_lr = behavior_mod.ops.lambda_return

    def lr(reward, cont, value, *a, **k):
        seen["lambda_return"] |= {reward.dtype, cont.dtype, value.dtype}
        return real_lr(reward, cont, value, *a, **k)

    monkeypatch.setattr(behavior_mod.ops, "lambda_return", lr)
    real_update = agent.behavior.retnorm.update

    def update(ret):
        seen["retnorm"].add(ret.dtype)
        return real_update(ret)

    monkeypatch.setattr(agent.behavior.retnorm, "update", update)
    return seen


def test_bf16_keeps_the_listed_parts_fp32(monkeypatch):
    torch.manual_seed(0)
    spec = image_vector_spec()
    agent = Agent(tiny_config(precision="bf16"), spec)
    seen = _record_dtypes(agent, monkeypatch)
    batch = random_batch(spec, B=2, T=5)
    terms_seen = {}
    real_wm_loss = agent.wm.loss

    def wm_loss(data, carry=None, uniforms=None):
        terms, post, metrics = real_wm_loss(data, carry, uniforms)
        terms_seen.update({k: v.dtype for k, v in terms.items()})
        terms_seen["h"], terms_seen["post_logits_kl"] = post["h"].dtype, agent.wm.rssm.kl(
            post["post_logits"], post["prior_logits"])[0].dtype
        return terms, post, metrics

    monkeypatch.setattr(agent.wm, "loss", wm_loss)
    m = agent.train_step(batch)
    assert m["opt/skipped"] == 0.0
    assert seen["linear"] == {torch.bfloat16} and seen["conv"] == {torch.bfloat16}   # computed in bf16
    assert seen["norm_in"] == {torch.float32}                                         # norms in fp32
    assert seen["lambda_return"] == {torch.float32} and seen["retnorm"] == {torch.float32}
    assert all(d == torch.float32 for d in terms_seen.values()), terms_seen           # losses, KL, GRU state
    assert all(p.dtype == torch.float32 for p in agent.parameters())                  # fp32 parameters
    moments = [v for o in agent.opt.opts.values() for st in o.state.values() for v in st.values()
               if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0]
    assert moments and all(v.dtype == torch.float32 for v in moments)                  # and optimiser state
    # acting uses the same precision: the encoder under autocast, the fused step in bf16
    seen["conv"].clear()
    fused = []
    real_act = agent_mod.fused_act
    monkeypatch.setattr(agent_mod, "fused_act", lambda *a, **k: (fused.append(k.get("bf16")), real_act(*a, **k))[1])
    obs = {k: batch[k][:, 0] for k in ("image", "vector")}
    obs["is_first"] = torch.ones(2, dtype=torch.bool)
    action, carry = agent.policy(obs, agent.initial_carry(2))
    assert seen["conv"] == {torch.bfloat16} and fused == [True]
    assert carry["h"].dtype == torch.float32 and action.dtype == torch.float32


def test_fp32_computes_in_fp32(monkeypatch):
    torch.manual_seed(0)
    spec = image_vector_spec()
    agent = Agent(tiny_config(precision="fp32"), spec)
    seen = _record_dtypes(agent, monkeypatch)
    agent.train_step(random_batch(spec, B=2, T=5))
    assert seen["linear"] == {torch.float32} and seen["conv"] == {torch.float32}


def test_checkpoints_load_across_precisions():
    torch.manual_seed(0)
    spec = image_vector_spec()
    bf = Agent(tiny_config(precision="bf16"), spec)
    bf.train_step(random_batch(spec, B=2, T=5))
    buf = io.BytesIO()
    torch.save(bf.checkpoint_state(), buf)
    buf.seek(0)
    fp = Agent(tiny_config(precision="fp32"), spec)
    fp.load_checkpoint_state(torch.load(buf, weights_only=True))
    for (k, a), b in zip(bf.state_dict().items(), fp.state_dict().values()):
        assert torch.equal(a, b), k
    m = fp.train_step(random_batch(spec, B=2, T=5, seed=1))
    assert m["opt/skipped"] == 0.0


def test_measuring_the_bf16_speedup_leaves_the_global_rng_alone(monkeypatch):
    import dreamer_ext.agent as agent_mod
    monkeypatch.setattr(agent_mod, "_BF16_SPEEDUP", None)       # measure again in this test
    monkeypatch.setattr(agent_mod, "cpu_has_bf16_instructions", lambda: True)
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    agent_mod.cpu_bf16_speedup()
    assert torch.equal(torch.rand(3), want)  # a run's draws do not depend on whether the process measured before
