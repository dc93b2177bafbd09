"""RePo world-model objective (Zhu et al. 2023, arXiv 2309.00082) on DreamerV3's categorical RSSM.

Maximise reward predictability under a KL budget: ``max I(z; r | a)  s.t.  I(z; o | a) <= eps``, with the reward
log-likelihood as the objective and the posterior–prior KL per step as the constraint, solved by dual gradient
descent on the Lagrange multiplier beta. Terms (each ``[B, T]``; the agent's loss table scales and averages them):

- ``rew``: twohot cross-entropy of the reward head; ``con``: Bernoulli log-loss of the continue head (target as in
  the dreamer objective),
- ``kl = sg(beta) · (alpha · KL[sg q‖p] + (1 − alpha) · KL[q‖sg p] − eps)``: KL in nats per step (summed over the
  latent groups; the table's mean averages it over batch and time), no free bits, beta detached,
- ``probe``: the decoders' loss on **detached** features. The decoders are a probe of what the latent holds (and
  give the reconstruction images); their parameters are left out of the model optimiser and trained by the
  objective's own Adam, so no reconstruction gradient reaches the encoder or the RSSM.

The dual step (:meth:`RepoObjective.after_update`) runs after the model step on the same batch's violation
``KL_bal − eps`` (or an EMA of KL_bal): ``log beta`` has its own Adam with the loss ``−log beta · sg(violation)``, so beta
rises while the KL is over budget and falls while it is under, clamped to ``[beta_min, beta_max]``. It is skipped
whenever the model step was skipped (a non-finite loss or gradient). ``log beta`` is a parameter of this module
but of no model parameter group (no AGC, no clipping, no weight decay). Its optimiser, the probe's optimiser, the
KL EMA and the alarm counters are saved in the module's state dict (``get_extra_state``), so checkpoints carry them.

Alarms (a console warning, rate-limited, and the counter ``repo/alarms``): a loss term of the model step above 1e3 (the
probe's loss, a sum over pixels that never reaches the model, is exempt), beta at its clamp for more than 1000
consecutive updates, KL_bal above 10 eps, a non-finite value.
"""
from __future__ import annotations

import math
import sys

import torch
from torch import nn

from .base import Objective

ALARM_TERM = 1e3        # a loss term above this
ALARM_CLAMP_UPDATES = 1000  # beta at a clamp for more updates than this
ALARM_KL_FACTOR = 10.0  # KL_bal above this many eps
ALARM_EVERY = 1000      # print a kind of alarm at most once per this many updates


class RepoObjective(Objective):
    name = "repo"
    terms = ("rew", "con", "kl", "probe")

    def __init__(self, config):
        super().__init__(config)
        rc = config.repo
        self.eps, self.alpha = float(rc.eps), float(rc.alpha)
        self.log_min, self.log_max = math.log(rc.beta_min), math.log(rc.beta_max)
        self.beta_lr, self.probe_lr, self.ema_decay = float(rc.beta_lr), float(rc.probe_lr), float(rc.kl_ema)
        self.log_beta = nn.Parameter(torch.tensor(math.log(rc.beta_init), dtype=torch.float32))
        self.register_buffer("kl_ema", torch.tensor(float("nan")))
        self.beta_opt = torch.optim.Adam([self.log_beta], lr=self.beta_lr)
        self.probe_opt: torch.optim.Optimizer | None = None  # made at the first update (the decoders exist then)
        self._pending_probe_state: dict | None = None
        self._last: dict = {}
        self.reduce = None  # data-parallel: the mean over the ranks (dreamer_ext.dist), set by the agent
        self.updates = 0          # dual steps taken
        self.at_clamp = 0         # consecutive dual steps that ended at a clamp
        self.alarms = 0           # alarms raised so far
        self._last_print: dict[str, int] = {}

    # ------------------------------------------------------------------ the loss
    @property
    def beta(self) -> torch.Tensor:
        return self.log_beta.detach().exp()

    def forward(self, wm, data: dict, post: dict) -> tuple[dict, dict]:
        """``post``: ``feat [B,T,F]``, ``post_logits``/``prior_logits [B,T,S,C]``. Returns (terms, metrics)."""
        feat = post["feat"]
        dyn, rep = wm.rssm.kl(post["post_logits"], post["prior_logits"])  # fp32, nats per step, [B, T]
        kl_bal = self.alpha * dyn + (1.0 - self.alpha) * rep
        metrics: dict[str, torch.Tensor] = {}
        terms = {
            **self.reward_and_continue(wm, data, feat),
            "kl": self.beta.to(kl_bal.device) * (kl_bal - self.eps),
            "probe": self.decoder_loss(wm, data, feat.detach(), metrics, "probe"),
        }
        with torch.no_grad():
            kl_mean = kl_bal.detach().mean()
            self._last = {"kl": kl_mean}
            beta = self.beta
            metrics.update({
                "kl/dyn": dyn.detach().mean(), "kl/rep": rep.detach().mean(), "repo/kl_bal": kl_mean,
                "repo/violation": kl_mean - self.eps, "repo/beta": beta, "repo/beta_violation": beta * (kl_mean - self.eps),
                "repo/kl_above_eps_frac": (kl_bal.detach() > self.eps).float().mean(),
                "repo/max_logit": torch.maximum(post["post_logits"].detach().abs().amax(),
                                                post["prior_logits"].detach().abs().amax()).float(),
            })
        return terms, metrics

    def model_parameters(self, wm) -> list:
        """Everything of ``wm`` but log beta and the probe decoders (they have their own optimisers)."""
        own = {id(p) for p in self.parameters()} | {id(p) for p in wm.decoders.parameters()}
        return [p for p in wm.parameters() if id(p) not in own]

    # ------------------------------------------------------------------ after the model step
    def after_update(self, wm, data: dict, metrics: dict, ok: bool) -> None:
        """The probe's step and the dual step on beta, both only when the model step was applied (``ok``)."""
        probe_params = [p for p in wm.decoders.parameters() if p.requires_grad]
        probe_ok = ok and all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in probe_params)
        if probe_params:
            opt = self._probe_optimizer(probe_params)
            if probe_ok:
                opt.step()
            opt.zero_grad(set_to_none=True)
        kl = self._last.get("kl")
        if kl is not None and self.reduce is not None:  # data-parallel: the KL of the global batch
            kl = self.reduce(kl)
        dual_ok = ok and kl is not None and bool(torch.isfinite(kl))
        if dual_ok:
            kl = kl.to(self.log_beta.device)
            if self.ema_decay > 0:
                prev = self.kl_ema
                self.kl_ema.copy_(kl if bool(torch.isnan(prev)) else self.ema_decay * prev + (1 - self.ema_decay) * kl)
                kl = self.kl_ema
            violation = kl - self.eps
            self.beta_opt.zero_grad(set_to_none=True)
            self.log_beta.grad = -violation.detach().reshape(())  # d/d log beta of −log beta · sg(violation)
            self.beta_opt.step()
            with torch.no_grad():
                self.log_beta.clamp_(self.log_min, self.log_max)
            self.updates += 1
            lb = float(self.log_beta.detach())
            self.at_clamp = self.at_clamp + 1 if lb <= self.log_min + 1e-6 or lb >= self.log_max - 1e-6 else 0
        self._alarms(metrics, ok, dual_ok)
        metrics["repo/beta_after"] = self.beta
        metrics["repo/dual_skipped"] = torch.tensor(0.0 if dual_ok else 1.0)
        metrics["repo/at_clamp_updates"] = torch.tensor(float(self.at_clamp))
        metrics["repo/alarms"] = torch.tensor(float(self.alarms))

    def _probe_optimizer(self, params: list) -> torch.optim.Optimizer:
        if self.probe_opt is None:
            self.probe_opt = torch.optim.Adam(params, lr=self.probe_lr)
            if self._pending_probe_state is not None:
                self.probe_opt.load_state_dict(self._pending_probe_state)
                self._pending_probe_state = None
        return self.probe_opt

    def _alarms(self, metrics: dict, ok: bool, dual_ok: bool) -> None:
        found = []
        # the probe's loss (a sum over pixels, like any reconstruction loss) never reaches the model: neither it nor the
        # table's total, which includes it, is alarmed
        keys = [k for k in metrics if k.startswith("loss/") and not k.startswith("loss/probe") and k != "loss/total"]
        values = torch.stack([torch.as_tensor(metrics[k]).detach().float().cpu().reshape(()) for k in keys]).tolist() \
            if keys else []  # one device sync for all terms
        for k, x in zip(keys, values):
            if not math.isfinite(x):
                found.append(("nonfinite", f"{k} is {x}"))
            elif abs(x) > ALARM_TERM:
                found.append(("term", f"{k} = {x:.4g} > {ALARM_TERM:g}"))
        kl = self._last.get("kl")
        if kl is not None and float(kl) > ALARM_KL_FACTOR * self.eps:
            found.append(("kl", f"KL_bal = {float(kl):.4g} nats > {ALARM_KL_FACTOR:g} eps = {ALARM_KL_FACTOR * self.eps:g}"))
        if not ok:
            found.append(("skipped", "the model step was skipped (non-finite loss or gradient); no dual step"))
        if self.at_clamp > ALARM_CLAMP_UPDATES:
            found.append(("clamp", f"beta = {float(self.beta):.3g} has been at its clamp for {self.at_clamp} updates"))
        for kind, msg in found:
            self.alarms += 1
            last = self._last_print.get(kind)
            if last is None or self.updates - last >= ALARM_EVERY:
                self._last_print[kind] = self.updates
                print(f"warning: repo: {msg} (update {self.updates}; alarms so far: {self.alarms})", file=sys.stderr,
                      flush=True)

    # ------------------------------------------------------------------ checkpoint state
    def get_extra_state(self) -> dict:
        probe = self.probe_opt.state_dict() if self.probe_opt is not None else self._pending_probe_state
        return {"beta_opt": self.beta_opt.state_dict(), "probe_opt": probe, "updates": self.updates,
                "at_clamp": self.at_clamp, "alarms": self.alarms}

    def set_extra_state(self, state: dict) -> None:
        self.beta_opt.load_state_dict(state["beta_opt"])
        self.updates, self.at_clamp, self.alarms = int(state["updates"]), int(state["at_clamp"]), int(state["alarms"])
        if state.get("probe_opt") is not None:
            if self.probe_opt is not None:
                self.probe_opt.load_state_dict(state["probe_opt"])
            else:
                self._pending_probe_state = state["probe_opt"]
