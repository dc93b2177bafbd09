"""The agent: ``policy(obs, carry)`` for acting and ``train_step(batch)`` for one full update.

This is the only object the training loop talks to.

Batch layout (all ``[B, T, ...]``, any device): the spec's observation keys, ``action [B, T, A]`` = action taken at
obs_t (the world model uses it shifted right by one as the previous action, zeros at t=0, masked by is_first),
``reward [B, T]`` = reward received on arriving at obs_t, ``is_first``, ``is_last`` and ``is_terminal`` bool ``[B, T]``.

Replay context (``config.replay_context = K``, V2: 1): batches hold ``T + K`` steps plus the stored RSSM state of each
step, ``latent_h [B, T+K, deter]`` (float16) and ``latent_z [B, T+K, S]`` (class indices), as written by
:meth:`Agent.latents` when acting. The first K steps are context: the world model starts from the stored state of step
K−1 and the action taken there, and learns on the T steps after it.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .behavior import Behavior
from .config import Config, loss_scales
from . import ops
from .envs.spec import EnvSpec
from .dist import SINGLE, Dist
from .fused_rollout import RolloutWeights, draw_seed, fused_act, rollout_uniforms
from .losses import total_loss
from .nets import float_dtype
from .optim import Optimizer
from .world_model import WorldModel

__all__ = ["Agent", "resolve_device", "LATENT_KEYS"]

LATENT_KEYS = ("latent_h", "latent_z")  # the replay's mutable entries (replay context)
POSTERIOR_STREAM = 2  # the Philox stream of the training posteriors' samples (the rollout uses 0 and 1)


def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU reports bf16 dot-product instructions (avx512_bf16 or AMX) in /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool({"avx512_bf16", "amx_bf16"} & flags)
    except OSError:
        pass
    return False


ACT_ROWS_PER_THREAD = 16  # acting on the CPU: one torch/kernel thread per this many environments (at least one)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with at most ``n`` torch intra-op threads (restored after). For small CPU batches a second
    spinning thread costs far more than it saves (measured: a 3-channel 5x5 convolution of one 64x64 frame took
    0.39 ms with 2 threads and 0.14 ms with 1); switching takes about 5 µs."""
    before = torch.get_num_threads()
    if n >= before:
        yield
        return
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


BF16_MIN_SPEEDUP = 1.2  # "fast": a bf16 matmul at least this much faster than fp32, measured here
_BF16_SPEEDUP: float | None = None


def cpu_bf16_speedup() -> float:
    """fp32 time / bf16 time of a 256×1024 @ 1024×1024 matmul on this CPU with torch's current threads (best of 3
    after a warm-up, about 50 ms once per process; 0 without bf16 instructions). Flags alone are not enough: a
    machine that reports avx512_bf16 measured bf16 matmuls 1.8x *slower* than fp32 (2026-12-02)."""
    global _BF16_SPEEDUP
    if _BF16_SPEEDUP is None:
        _BF16_SPEEDUP = 0.0
        if cpu_has_bf16_instructions():
            import time

            g = torch.Generator().manual_seed(0)  # its own generator: measuring never moves the global RNG

            def best(dtype):
                a, b = torch.randn(256, 1024, generator=g).to(dtype), torch.randn(1024, 1024, generator=g).to(dtype)
                a @ b
                times = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    a @ b
                    times.append(time.perf_counter() - t0)
                return min(times)

            _BF16_SPEEDUP = best(torch.float32) / best(torch.bfloat16)
    return _BF16_SPEEDUP


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``"bf16"``/``"fp32"`` as given; ``"auto"``: bf16 on a CUDA device that supports it, or on a CPU where a bf16
    matmul measures at least :data:`BF16_MIN_SPEEDUP` times faster than fp32 (:func:`cpu_bf16_speedup`), else
    fp32. Returns the compute dtype of matmuls and convolutions."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision: expected auto|bf16|fp32, got {precision!r}")
    if precision == "auto":
        if device.type == "cuda":
            fast = torch.cuda.is_bf16_supported()
        else:
            fast = cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
        precision = "bf16" if fast else "fp32"
    return torch.bfloat16 if precision == "bf16" else torch.float32


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    Raises ValueError (starting with ``device:``) for other names and for cuda without a visible GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device: expected auto|cpu|cuda, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but torch.cuda.is_available() is False")
    return torch.device(name)


class Agent(nn.Module):
    def __init__(self, config: Config, spec: EnvSpec):
        super().__init__()
        config.validate()
        if spec.act_dim <= 0:
            raise ValueError(f"spec.act_dim: must be positive, got {spec.act_dim}")
        self.config, self.spec = config, spec
        self.wm = WorldModel(config, spec)
        self.behavior = Behavior(config, self.wm.rssm.feat_dim, spec.act_dim, spec.discrete)
        self._device = resolve_device(config.device)
        self.compute_dtype = resolve_precision(config.precision, self._device)
        self.to(self._device)
        self.dist = SINGLE
        self.scales = loss_scales(config)
        self.opt = Optimizer(config.optim, {
            "world_model": self.wm.objective.model_parameters(self.wm),
            "actor": list(self.behavior.actor.parameters()),
            "critic": list(self.behavior.critic.parameters()),
        })

    @property
    def device(self) -> torch.device:
        return self._device

    def use_dist(self, d: Dist) -> None:
        """Train data-parallel in the group ``d`` (:mod:`dreamer_ext.dist`): parameters and buffers become rank 0's,
        and from now on every update averages the gradients, the skip decision, the return percentiles, RePo's KL
        for the dual step and the metrics over the ranks."""
        self.dist = d
        d.broadcast_(list(self.parameters()) + list(self.buffers()))
        self.behavior.retnorm.gather = d.gather_cat if d.active else None
        if hasattr(self.wm.objective, "reduce"):
            self.wm.objective.reduce = d.mean if d.active else None

    def autocast(self):
        """Mixed precision for the forward passes: matmuls and convolutions in ``compute_dtype`` (bf16) with fp32
        parameters; norms, softmax, distributions, KL, losses, λ-returns and return normalisation stay fp32 (each
        of those casts to fp32 itself). A no-op in fp32."""
        return torch.autocast(self._device.type, dtype=torch.bfloat16,
                              enabled=self.compute_dtype == torch.bfloat16)

    def param_count(self) -> dict[str, int]:
        """Parameter counts per module (slow critic excluded from the total) plus ``"total"``."""
        mods = {"encoder": self.wm.encoders, "rssm": self.wm.rssm, "decoder": self.wm.decoders,
                "reward": nn.ModuleList([self.wm.reward_mlp, self.wm.reward_out]),
                "cont": nn.ModuleList([self.wm.cont_mlp, self.wm.cont_out]),
                "actor": self.behavior.actor, "critic": self.behavior.critic}
        out = {k: sum(p.numel() for p in m.parameters()) for k, m in mods.items()}
        out["total"] = sum(out.values())
        return out

    def checkpoint_state(self) -> dict:
        """Everything needed to resume: module state (incl. slow critic, return scale) and optimiser state."""
        return {"model": self.state_dict(), "optimizer": self.opt.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        """Inverse of :meth:`checkpoint_state` (tensors may come from any device)."""
        self.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ acting
    def initial_carry(self, batch_size: int) -> dict[str, torch.Tensor]:
        """``{"h": [B, deter], "z": [B, S, C], "action": [B, A]}`` of zeros on the agent's device."""
        if batch_size <= 0:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        carry = self.wm.rssm.initial(batch_size, self.device)
        carry["action"] = torch.zeros(batch_size, self.spec.act_dim, device=self.device)
        return carry

    def latents(self, state: dict) -> dict[str, torch.Tensor]:
        """The replay-context entries of RSSM states ``{"h": [..., deter], "z": [..., S, C]}``: ``latent_h`` float16
        ``[..., deter]`` and ``latent_z`` class indices ``[..., S]`` (see :meth:`RSSM.pack`), on the CPU."""
        packed = self.wm.rssm.pack(state)
        return {"latent_h": packed["h"].cpu(), "latent_z": packed["z"].cpu()}

    @torch.no_grad()
    def policy(self, obs: dict, carry: dict, sample: bool = True) -> tuple[torch.Tensor, dict]:
        """One acting step.

        ``obs``: the spec's keys batched ``[B, ...]`` plus ``is_first`` bool ``[B]`` (where set, the carry is reset
        to zeros before the step). ``sample``: True samples the actor's distribution (training, and the authors'
        evaluation), False takes its mode. Returns (action ``[B, A]`` float32 — one-hot for discrete, in [-1, 1]
        for continuous — and the new carry).
        """
        if not isinstance(sample, bool):
            raise ValueError(f"sample: expected a bool, got {sample!r}")
        if "is_first" not in obs:
            raise ValueError("obs: missing key 'is_first'")
        dev = self.device
        seq = {k: obs[k].to(dev, non_blocking=True)[:, None] for k in self.wm.encoders}
        is_first = obs["is_first"].to(dev).bool()
        seed = draw_seed()  # one Philox key per step: the same draws on either backend
        n = is_first.shape[0]
        kernel_threads = torch.get_num_threads()  # the fused step picks its own count by the work (ops.ActPlan)
        threads = -(-n // ACT_ROWS_PER_THREAD) if dev.type == "cpu" else kernel_threads
        with self.autocast(), torch_threads(threads):
            embed = self.wm.encode(seq)[:, 0]
            if ops.get_backend() == "kernels" and dev.type == "cpu":
                action, post = fused_act(self._act_weights(), carry, embed, is_first, sample, seed,
                                         bf16=self.compute_dtype == torch.bfloat16, threads=kernel_threads)
            else:
                rssm = self.wm.rssm
                u = rollout_uniforms(seed, n, 1, rssm.S, 1 if self.spec.discrete else self.spec.act_dim, dev)
                state = {"h": carry["h"].to(dev), "z": carry["z"].to(dev)}
                post = rssm.obs_step(state, carry["action"].to(dev), embed, is_first, u["latent"][0])
                dist = self.behavior.actor(rssm.feat(post))
                action = dist.sample(u["action"][0]) if sample else dist.mode()
        action = action.detach().float()
        if not self.spec.discrete:
            action = action.clamp(-1.0, 1.0)
        carry = {"h": post["h"], "z": post["z"], "action": action}
        if "z_index" in post:  # the fused step's class indices: the next fused step reads them instead of z
            carry["z_index"] = post["z_index"]
        return action, carry

    def _act_weights(self) -> RolloutWeights:
        """The fused acting step's packed weights (kept, repacked only when a parameter changed)."""
        cached = self.__dict__.get("_fused_act_weights")
        if cached is None:
            cached = self.__dict__["_fused_act_weights"] = RolloutWeights(self.wm.rssm, self.behavior.actor, "post")
        return cached

    # ------------------------------------------------------------------ learning
    def _prepare(self, batch: dict) -> tuple[dict, dict | None]:
        """Checked, typed batch on the device, and the start state: with replay context the first K steps are cut off
        and the stored state of step K−1 plus its action become the carry (None without replay context)."""
        need = list(self.wm.encoders) + ["action", "reward", "is_first", "is_last", "is_terminal"]
        K = self.config.replay_context
        if K:
            need += LATENT_KEYS
        missing = [k for k in need if k not in batch]
        if missing:
            hint = " (replay_context=1 trains on windows with stored latents; 0 trains without)" if K else ""
            raise ValueError(f"batch: missing keys {missing}{hint}")
        data = {k: batch[k].to(self.device, non_blocking=True) for k in need}
        B, T = data["reward"].shape[:2]
        for k in need:
            if tuple(data[k].shape[:2]) != (B, T):
                raise ValueError(f"batch[{k!r}]: leading dims {tuple(data[k].shape[:2])} != {(B, T)}")
        if data["action"].shape[-1] != self.spec.act_dim:
            raise ValueError(f"batch['action']: last dim {data['action'].shape[-1]} != act_dim {self.spec.act_dim}")
        data["action"] = data["action"].to(float_dtype(self))
        data["reward"] = data["reward"].to(float_dtype(self))
        data["is_first"] = data["is_first"].bool()
        data["is_terminal"] = data["is_terminal"].bool()
        data["is_last"] = data["is_last"].bool()
        if not K:
            return data, None
        if T <= K:
            raise ValueError(f"batch: replay_context={K} needs windows of more than {K} steps, got {T}")
        carry = self.wm.rssm.unpack(data.pop("latent_h")[:, K - 1], data.pop("latent_z")[:, K - 1])
        carry["action"] = data["action"][:, K - 1]
        return {k: v[:, K:] for k, v in data.items()}, carry

    def _update_key(self) -> int:
        """The update's Philox key, drawn from torch's generator (data-parallel: rank 0's, broadcast). With it every
        random draw of an update (posterior samples, imagined latents and actions) is keyed by the *global* row of
        the batch, so 2 ranks × batch B draw exactly what 1 process × batch 2B draws."""
        return self.dist.broadcast_int(draw_seed())

    def train_step(self, batch: dict, return_latents: bool = False):
        """One full update: world model, imagination, actor, critic, optimiser, slow critic, return norm.

        Randomness: one Philox key per update (:meth:`_update_key`); the posterior sample of batch row b at step t
        draws Philox row b (stream 2) and the imagination from start state n = b·T + t draws row n (streams 0 and 1),
        offset by this rank's first global row.

        Every loss term goes into one table (``loss/<term>``), scaled by :func:`~dreamer_ext.config.loss_scales` and
        summed once into ``loss/total``, which is differentiated once. Returns scalar metrics (loss terms, KL dyn/rep,
        entropies, return scale, grad norms, ...) as floats. A non-finite loss or gradient skips the update
        (``opt/skipped`` = 1): parameters, optimiser state and every buffer (return scale, slow-critic counter,
        objective state) are left exactly as they were.

        ``return_latents=True`` returns ``(metrics, latents)``: the posterior states of the trained steps as
        :meth:`latents` entries ``[B, T, ...]`` (computed before the optimiser step; the replay writes them back),
        or None when the update was skipped.
        """
        self.train()
        data, carry = self._prepare(batch)
        saved_buffers = [b.detach().clone() for b in self.buffers()]
        self.opt.zero_grad()
        B, T = data["reward"].shape[:2]
        key, row0 = self._update_key(), self.dist.rank * B  # this rank's batch rows are global rows row0..row0+B-1
        post_u = ops.reference.philox_uniform(key, T, B, self.wm.rssm.S, POSTERIOR_STREAM, row0=row0)
        with self.autocast():  # forward passes only; the backward pass follows the forward's dtypes
            terms, post, metrics = self.wm.loss(data, carry, post_u.transpose(0, 1).to(self.device))
            start = {"h": post["h"].detach().reshape(B * T, -1),
                     "z": post["z"].detach().reshape(B * T, *post["z"].shape[2:])}
            start_cont = 1.0 - data["is_terminal"].reshape(B * T).float()
            beh_terms, beh_metrics, start_return = self.behavior.loss(self.wm, start, start_cont, seed=key,
                                                                      row0=row0 * T)
            metrics.update(beh_metrics)
            if "repval" in self.scales:  # V2: the critic also learns on the replayed states
                feat = post["feat"] if self.config.critic.repval_grad else post["feat"].detach()
                beh_terms["repval"], rv = self.behavior.replay_value_loss(feat, data, start_return.reshape(B, T))
                metrics.update(rv)
        loss, loss_metrics = total_loss({**terms, **beh_terms}, self.scales)
        metrics.update(loss_metrics)
        loss.backward()
        allow = bool(torch.isfinite(loss.detach()))
        if self.dist.active:  # every rank applies the same mean gradient, or every rank skips
            self.dist.average_([p.grad for p in self.parameters() if p.grad is not None])
            allow = self.dist.all_true(allow)
        opt_metrics = self.opt.step(allow=allow)
        metrics.update(opt_metrics)
        ok = bool(opt_metrics["opt/skipped"] == 0)
        if ok:
            self.behavior.update_slow()
        else:  # undo buffer updates made while computing the losses (e.g. the return scale EMA)
            with torch.no_grad():
                for buf, old in zip(self.buffers(), saved_buffers):
                    buf.copy_(old)
        self.wm.objective.after_update(self.wm, data, metrics, ok)
        keys = list(metrics)
        vals = torch.stack([torch.as_tensor(metrics[k]).detach().float().cpu().reshape(()) for k in keys])
        vals = self.dist.mean(vals).tolist()  # data-parallel: the mean over the ranks
        metrics = dict(zip(keys, vals))
        if not return_latents:
            return metrics
        return metrics, (self.latents(post) if ok else None)
