"""Optimisers: LaProp with per-tensor adaptive gradient clipping (V2) and the V1 Adam setup.

LaProp step for each tensor θ with gradient g (t = step count starting at 1):

1. AGC: ``g ← g · min(1, agc · max(pmin, ‖θ‖) / ‖g‖)`` (per tensor, skipped if agc == 0)
2. RMS:  ``v ← β2·v + (1−β2)·g²``, ``u = g / (sqrt(v / (1−β2^t)) + eps)``
3. momentum: ``m ← β1·m + (1−β1)·u``, ``θ ← θ − lr_t · m / (1−β1^t)``
4. ``lr_t = lr · min(1, t / warmup)`` (linear warm-up; warmup = 0 disables)
"""
from __future__ import annotations


import torch
from torch import nn

from .config import OptimConfig

__all__ = ["LaProp", "agc_", "Optimizer", "warmup_lr"]


def warmup_lr(lr: float, step: int, warmup: int) -> float:
    """Learning rate at (1-based) ``step`` with a linear warm-up over ``warmup`` steps."""
    return lr * min(1.0, step / warmup) if warmup > 0 else lr


@torch.no_grad()
def agc_(params: list, grads: list, ratio: float, pmin: float) -> None:
    """In-place per-tensor adaptive gradient clipping: ``‖g‖ ≤ ratio · max(pmin, ‖θ‖)``."""
    if not grads or ratio <= 0:
        return
    gn = torch.stack(torch._foreach_norm(grads))
    pn = torch.stack(torch._foreach_norm(params)).clamp_min(pmin)
    factor = (ratio * pn / gn.clamp_min(1e-30)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(factor.unbind()))


class LaProp(torch.optim.Optimizer):
    """LaProp (RMS-normalise, then momentum) with AGC and warm-up; see the module docstring."""

    def __init__(self, params, lr: float = 4e-5, eps: float = 1e-20, beta1: float = 0.9, beta2: float = 0.999,
                 agc: float = 0.3, agc_pmin: float = 1e-3, warmup: int = 1000):
        if lr <= 0:
            raise ValueError(f"lr: must be positive, got {lr}")
        if not 0 <= beta1 < 1 or not 0 <= beta2 < 1:
            raise ValueError(f"beta1/beta2: must be in [0, 1), got {beta1}/{beta2}")
        super().__init__(params, dict(lr=lr, eps=eps, beta1=beta1, beta2=beta2, agc=agc, agc_pmin=agc_pmin,
                                      warmup=warmup))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            agc_(params, grads, group["agc"], group["agc_pmin"])
            ms, vs = [], []
            for p in params:
                st = self.state[p]
                if not st:
                    st["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms.append(st["m"])
                vs.append(st["v"])
            group["step"] = t = group.get("step", 0) + 1
            b1, b2 = group["beta1"], group["beta2"]
            torch._foreach_mul_(vs, b2)
            torch._foreach_addcmul_(vs, grads, grads, 1.0 - b2)
            denom = torch._foreach_mul(vs, 1.0 / (1.0 - b2 ** t))
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            upd = torch._foreach_div(grads, denom)
            torch._foreach_mul_(ms, b1)
            torch._foreach_add_(ms, upd, alpha=1.0 - b1)
            lr = warmup_lr(group["lr"], t, group["warmup"])
            torch._foreach_add_(params, ms, alpha=-lr / (1.0 - b1 ** t))
        return None


class Optimizer:
    """All optimiser state of the agent behind one ``step()``.

    ``modules``: name -> list of parameters, e.g. ``{"world_model": ..., "actor": ..., "critic": ...}``.
    kind "laprop": one LaProp over all of them (V2). kind "adam": one Adam per module with a global-norm clip
    (world model: model_lr/model_eps/model_clip; others: ac_lr/ac_eps/ac_clip — V1), same warm-up schedule.
    ``step()`` checks that all gradients are finite (otherwise nothing is updated and ``skipped`` = 1) and returns
    per-module gradient norms (before clipping).
    """

    def __init__(self, cfg: OptimConfig, modules: dict[str, list]):
        if cfg.kind not in ("laprop", "adam"):
            raise ValueError(f"cfg.kind: expected 'laprop' or 'adam', got {cfg.kind!r}")
        self.cfg = cfg
        self.modules = {k: [p for p in v if p.requires_grad] for k, v in modules.items()}
        self.steps = 0
        if cfg.kind == "laprop":
            allp = [p for ps in self.modules.values() for p in ps]
            self.opts = {"all": LaProp(allp, cfg.lr, cfg.eps, cfg.beta1, cfg.beta2, cfg.agc, cfg.agc_pmin,
                                       cfg.warmup)}
            self.clips = {}
        else:
            self.opts, self.clips = {}, {}
            for name, ps in self.modules.items():
                wm = name == "world_model"
                self.opts[name] = torch.optim.Adam(ps, lr=cfg.model_lr if wm else cfg.ac_lr,
                                                   eps=cfg.model_eps if wm else cfg.ac_eps,
                                                   betas=(cfg.beta1, cfg.beta2))
                self.clips[name] = cfg.model_clip if wm else cfg.ac_clip
                for g in self.opts[name].param_groups:
                    g["base_lr"] = g["lr"]

    def zero_grad(self) -> None:
        for o in self.opts.values():
            o.zero_grad(set_to_none=True)

    @torch.no_grad()
    def grad_norms(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, ps in self.modules.items():
            gs = [p.grad for p in ps if p.grad is not None]
            out[name] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(gs))) if gs else torch.zeros(())
        return out

    @torch.no_grad()
    def step(self, allow: bool = True) -> dict[str, torch.Tensor]:
        """Apply the gradients unless ``allow`` is False or any gradient is non-finite (then ``opt/skipped`` = 1,
        the gradients are dropped and no parameter or optimiser state changes)."""
        norms = self.grad_norms()
        total = torch.linalg.vector_norm(torch.stack([n.to(torch.float32).cpu() for n in norms.values()]))
        metrics = {f"grad_norm/{k}": v for k, v in norms.items()}
        ok = allow and bool(torch.isfinite(total))
        metrics["opt/skipped"] = torch.tensor(0.0 if ok else 1.0)
        if not ok:
            self.zero_grad()
            return metrics
        self.steps += 1
        if self.cfg.kind == "adam":
            for name, opt in self.opts.items():
                clip = self.clips[name]
                if clip > 0:
                    nn.utils.clip_grad_norm_(self.modules[name], clip)
                for g in opt.param_groups:
                    g["lr"] = warmup_lr(g["base_lr"], self.steps, self.cfg.warmup)
                opt.step()
            metrics["opt/lr"] = torch.tensor(warmup_lr(self.cfg.model_lr, self.steps, self.cfg.warmup))
        else:
            self.opts["all"].step()
            metrics["opt/lr"] = torch.tensor(warmup_lr(self.cfg.lr, self.steps, self.cfg.warmup))
        return metrics

    def state_dict(self) -> dict:
        return {"steps": self.steps, "opts": {k: o.state_dict() for k, o in self.opts.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the moments and step counts; the hyperparameters stay those of this optimiser's config (torch's
        ``load_state_dict`` would bring back the saved lr/eps/betas, silently ignoring a changed config)."""
        self.steps = int(state["steps"])
        for k, o in self.opts.items():
            keep = [dict(g) for g in o.param_groups]
            o.load_state_dict(state["opts"][k])
            for group, mine in zip(o.param_groups, keep):
                for key, value in mine.items():
                    if key not in ("params", "step"):
                        group[key] = value
