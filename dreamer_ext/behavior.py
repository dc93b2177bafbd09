"""Behaviour learning: actor, critic, slow critic, return normalisation, λ-returns, actor/critic losses.

Imagination starts from every posterior state of the batch (stop-grad), runs the actor in the frozen world model
for H steps under ``no_grad`` and then recomputes only what needs gradients on the detached features: the actor's
log-probs/entropy (REINFORCE) and the critic's logits.

The rollout itself is the fused kernel (:mod:`dreamer_ext.fused_rollout`) on the kernels backend for CPU tensors, in
the precision of the surrounding autocast; otherwise (the reference backend, CUDA tensors until the CUDA rollout
exists) it is the PyTorch loop :meth:`RSSM.imagine <dreamer_ext.rssm.RSSM.imagine>`. Both draw their randomness
from the same Philox uniforms under one seed taken from torch's generator per call, so with the same torch seed
they imagine the same trajectory, up to samples that rounding moves across a sampling boundary.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from . import ops
from .config import Config
from .fused_rollout import RolloutWeights, draw_seed, fused_imagine, rollout_uniforms
from .dists import BoundedNormal, OneHotDist, TwoHot, f32, make_bins
from .nets import MLP, initialize, out_linear

__all__ = ["Actor", "Critic", "ReturnNorm", "Behavior", "trajectory_weight", "replay_lambda_return"]


class Actor(nn.Module):
    """``feat[..., F]`` -> OneHotDist (discrete, unimix) or BoundedNormal (continuous) over ``A`` actions."""

    def __init__(self, feat_dim: int, act_dim: int, discrete: bool, config: Config):
        super().__init__()
        ac = config.actor
        self.discrete, self.act_dim, self.cfg = discrete, act_dim, ac
        self.mlp = MLP(feat_dim, ac.units, ac.layers, config.norm)
        self.out = out_linear(self.mlp.out_dim, act_dim if discrete else 2 * act_dim, scale=ac.init_scale)

    def forward(self, feat: torch.Tensor):
        x = self.out(self.mlp(feat))
        if self.discrete:
            return OneHotDist(x, self.cfg.unimix)
        mean, std = x.chunk(2, -1)
        return BoundedNormal(mean, std, self.cfg.min_std, self.cfg.max_std)


class Critic(nn.Module):
    """``feat[..., F]`` -> TwoHot value distribution (zero-initialised output layer)."""

    def __init__(self, feat_dim: int, config: Config):
        super().__init__()
        cc, hc = config.critic, config.heads
        self.mlp = MLP(feat_dim, cc.units, cc.layers, config.norm)
        self.out = out_linear(self.mlp.out_dim, hc.num_bins, init="zeros")
        self.space = hc.bins
        self.register_buffer("bins", make_bins(hc.num_bins, hc.bin_range, hc.bins), persistent=False)

    def forward(self, feat: torch.Tensor) -> TwoHot:
        return TwoHot(self.out(self.mlp(feat)), self.bins, self.space)


class ReturnNorm(nn.Module):
    """Return scale ``S = EMA(P_high(R) − P_low(R))`` (decay d, starts at 0, updated before use).

    :meth:`update` returns the divisor ``max(limit, S)``.
    """

    def __init__(self, decay: float = 0.99, low: float = 5.0, high: float = 95.0, limit: float = 1.0):
        super().__init__()
        self.decay, self.low, self.high, self.limit = decay, low / 100.0, high / 100.0, limit
        self.register_buffer("scale", torch.zeros(()))
        self.gather = None  # data-parallel: a function that concatenates every rank's returns (dreamer_ext.dist)

    @torch.no_grad()
    def update(self, returns: torch.Tensor) -> torch.Tensor:
        r = f32(returns.detach()).reshape(-1)
        if self.gather is not None:  # the percentiles of the global batch, the same on every rank
            r = self.gather(r)
        q = torch.quantile(r, torch.tensor([self.low, self.high], device=r.device, dtype=r.dtype))
        self.scale.mul_(self.decay).add_((1.0 - self.decay) * (q[1] - q[0]))
        return self.divisor()

    def divisor(self) -> torch.Tensor:
        return torch.clamp(self.scale, min=self.limit)


def replay_lambda_return(reward: torch.Tensor, term: torch.Tensor, last: torch.Tensor, boot: torch.Tensor,
                         gamma: float, lam: float) -> torch.Tensor:
    """λ-returns along replayed sequences (batch-major ``[B, T]`` inputs -> ``[B, T−1]``), bootstrapped with ``boot``:
    ``R_{T−1} = boot_{T−1}``, ``R_t = r_{t+1} + γ(1−term_{t+1})·((1−λ')·boot_{t+1} + λ'·R_{t+1})``, ``λ' = λ·(1−last_{t+1})``.
    No gradient."""
    with torch.no_grad():
        live = (1.0 - term[:, 1:]) * gamma
        cont = (1.0 - last[:, 1:]) * lam
        out = [boot[:, -1]]
        for t in range(reward.shape[1] - 2, -1, -1):
            nxt = out[-1]
            out.append(reward[:, t + 1] + live[:, t] * ((1.0 - cont[:, t]) * boot[:, t + 1] + cont[:, t] * nxt))
        return torch.stack(out[::-1][:-1], 1) if len(out) > 1 else reward[:, :0]


def trajectory_weight(cont: torch.Tensor, gamma: float) -> torch.Tensor:
    """``w_t = Π_{i≤t} γ·ĉ_i`` along dim 0 (``cont[H+1, N] -> w[H+1, N]``), no gradient."""
    return torch.cumprod(gamma * cont.detach(), 0)


class Behavior(nn.Module):
    """Actor + critic + slow critic + return normaliser."""

    def __init__(self, config: Config, feat_dim: int, act_dim: int, discrete: bool):
        super().__init__()
        self.config, self.discrete, self.act_dim = config, discrete, act_dim
        ic = config.imag
        self.actor = Actor(feat_dim, act_dim, discrete, config)
        self.critic = Critic(feat_dim, config)
        initialize(self.actor, config.init)
        initialize(self.critic, config.init)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = ReturnNorm(ic.retnorm_decay, ic.retnorm_low, ic.retnorm_high, ic.retnorm_limit)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def policy_fn(self, feat: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """Sampled action ``[N, A]`` for the imagination rollout (no gradient)."""
        return self.actor(feat).sample(uniform).detach()

    def imagine(self, wm, start: dict, horizon: int | None = None, uniforms: dict | None = None,
                seed: int | None = None, row0: int = 0) -> dict:
        """Imagined trajectory from ``start = {"h": [N, deter], "z": [N, S, C]}`` (detached) under no_grad:
        ``{"h": [H+1, N, deter], "z": [H+1, N, S, C], "feat": [H+1, N, F], "action": [H, N, A]}``.

        Without ``uniforms`` it takes the Philox key ``seed`` (default: one drawn from torch's generator), start state
        r drawing Philox row ``row0 + r``, and runs the fused kernel where it applies (see the module docstring), else
        the PyTorch loop on that key's uniforms; with ``uniforms`` (tests) it runs the loop on them."""
        horizon = self.config.imag.horizon if horizon is None else horizon
        start = {"h": start["h"].detach(), "z": start["z"].detach()}
        with torch.no_grad():
            if uniforms is not None:
                return wm.rssm.imagine(self.policy_fn, start, horizon, uniforms)
            seed = draw_seed() if seed is None else seed
            dev = start["h"].device
            if ops.get_backend() == "kernels" and dev.type == "cpu" and start["h"].dtype != torch.float64:
                bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
                return fused_imagine(self._rollout_weights(wm), start, horizon, seed, bf16=bf16, row0=row0)
            rssm = wm.rssm
            u = rollout_uniforms(seed, start["h"].shape[0], horizon, rssm.S, 1 if self.discrete else self.act_dim, dev,
                                 row0=row0)
            return rssm.imagine(self.policy_fn, start, horizon, u)

    def _rollout_weights(self, wm) -> RolloutWeights:
        """The fused rollout's packed weights for ``wm``'s RSSM and this actor (kept, repacked only on change)."""
        cached = self.__dict__.get("_fused_weights")
        if cached is None or cached.rssm is not wm.rssm:
            cached = RolloutWeights(wm.rssm, self.actor)
            self.__dict__["_fused_weights"] = cached
        return cached

    def loss(self, wm, start: dict, start_cont: torch.Tensor, uniforms: dict | None = None, seed: int | None = None,
             row0: int = 0) -> tuple[dict, dict, torch.Tensor]:
        """Actor and critic loss terms from imagination.

        Args: ``start`` posterior states ``{"h": [N, deter], "z": [N, S, C]}``, ``start_cont[N]`` = 1 − is_terminal
        of those states (ĉ_0 without ``contdisc``); ``uniforms``, ``seed``, ``row0``: the imagination's randomness
        (:meth:`imagine`). Returns (terms ``{"actor": [H, N], "critic": [H, N]}``, unscaled
        and per element; metrics of 0-d tensors; and R_0 ``[N]``, the imagined λ-return of each start state, which
        bootstraps the replay-value loss).

        Discounting: with ``imag.contdisc`` (V2) ĉ_t is the continue head's probability, which already holds γ (its
        target is ``(1 − terminal)·γ``), for every state including the start, and the λ-return uses no extra γ;
        without it (notes) ĉ_0 = ``start_cont``, ĉ_t = the head's 0/1 mode and γ multiplies. Weights
        ``w_t = Π_{i≤t} disc·ĉ_i`` (disc = 1 or γ).
        """
        ic = self.config.imag
        H, disc = ic.horizon, (1.0 if ic.contdisc else ic.gamma)
        traj = self.imagine(wm, start, H, uniforms, seed, row0)
        feat = traj["feat"]                                            # [H+1, N, F], no grad
        with torch.no_grad():
            reward = wm.reward(feat[1:]).pred()                        # [H, N]  r̂_1..r̂_H
            if ic.contdisc:
                cont = wm.cont(feat).mean()                            # [H+1, N] probabilities, γ included
            else:
                cont = torch.cat([start_cont.float()[None], wm.cont(feat[1:]).pred()], 0)  # [H+1, N] hard 0/1
            slow = self.slow_critic(feat[:H]).pred()                   # [H, N]
        critic_dist = self.critic(feat)                                # grads into the critic only
        value = critic_dist.pred().detach()                            # [H+1, N]
        ret = ops.lambda_return(reward, cont[1:], value, disc, ic.lam)  # [H, N]
        weight = trajectory_weight(cont, disc)[:H]                     # [H, N]
        div = self.retnorm.update(ret)
        adv = (ret - value[:H]) / div
        # actor: REINFORCE on detached features
        pi = self.actor(feat[:H])
        logp = pi.log_prob(traj["action"])
        ent = pi.entropy()
        actor = -weight * (logp * adv.detach() + self.config.actor.entropy * ent)
        # critic: twohot CE to the λ-return and to the slow critic
        crit = TwoHot(critic_dist.logits[:H], critic_dist.bins, critic_dist.space)
        critic = weight * (crit.loss(ret) + self.config.critic.slow_reg * crit.loss(slow))
        metrics = {
            "actor/entropy": ent.detach().mean(), "actor/logp": logp.detach().mean(),
            "ret/mean": ret.mean(), "ret/scale": self.retnorm.scale.detach().clone(), "ret/adv_mean": adv.mean(),
            "ret/adv_std": adv.std(), "imag/reward": reward.mean(), "imag/cont": cont[1:].mean(),
            "imag/value": value.mean(), "imag/weight": weight.mean(), "imag/slow_value": slow.mean(),
        }
        return {"actor": actor, "critic": critic}, metrics, ret[0].detach()

    def replay_value_loss(self, feat: torch.Tensor, data: dict, boot: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """V2 replay-value loss: the critic on the replayed posterior states ``feat [B, T, F]`` against λ-returns of
        the real rewards and terminals, bootstrapped with each state's imagined return ``boot [B, T]`` (R_0).

        ``R_t = r_{t+1} + γ(1−term_{t+1})·((1−λ_{t+1})·boot_{t+1} + λ_{t+1}·R_{t+1})`` with ``λ_{t+1} = 0`` where
        ``is_last_{t+1}`` (the window crosses into another episode there), ``R_{T−1} = boot_{T−1}``. The term, per
        element ``[B, T−1]``, is ``(1 − is_last_t)·[CE(v_t, sg R_t) + slow_reg·CE(v_t, sg v_slow,t)]``. Gradients
        reach the critic and, through ``feat`` (when the caller does not detach it), the world model.
        """
        ic, cc = self.config.imag, self.config.critic
        ret = replay_lambda_return(f32(data["reward"]), data["is_terminal"].to(boot.dtype),
                                   data["is_last"].to(boot.dtype), f32(boot), ic.gamma, ic.lam)  # [B, T-1]
        dist = self.critic(feat[:, :-1])
        with torch.no_grad():
            slow = self.slow_critic(feat[:, :-1].detach()).pred()
        weight = 1.0 - data["is_last"][:, :-1].float()
        term = weight * (dist.loss(ret) + cc.slow_reg * dist.loss(slow))
        return term, {"repval/ret": ret.mean(), "repval/value": dist.pred().detach().mean()}

    @torch.no_grad()
    def update_slow(self) -> None:
        """``θ_slow ← rate·θ + (1 − rate)·θ_slow`` every ``critic.slow_every`` updates."""
        self.updates += 1
        cc = self.config.critic
        if int(self.updates) % cc.slow_every:
            return
        src = list(self.critic.parameters())
        dst = list(self.slow_critic.parameters())
        torch._foreach_lerp_(dst, src, cc.slow_rate)
