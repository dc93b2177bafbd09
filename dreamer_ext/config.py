"""Typed configuration for dreamer_ext: nested dataclasses, size presets, validation, JSON round-trip.

Every field carries ``metadata={"help": ...}`` (one line) which the CLI generator reads. Nested fields are
addressed with dotted paths (``rssm.deter``); :func:`set_path` / :func:`get_path` do that.

Defaults are DreamerV3 V2 behaviour except where ``dreamerv3.md`` marks the project's notes (symlog twohot bins,
β_rep = 0.1, actor unimix, explicit γ). V1 behaviour is reachable through switches (``norm="layer"``,
``optim.kind="adam"``, ``heads.bins="symexp"`` is the *V2* raw-space switch).

Step counting: ``steps`` counts *policy steps* (agent steps, i.e. after action repeat), which is how Atari100k
counts its 100k/110k budget (110k policy steps = 440k frames with action repeat 4). ``eval_every`` and ``log_every``
use the same unit.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

__all__ = [
    "Config", "RSSMConfig", "EncoderConfig", "DecoderConfig", "HeadsConfig", "ActorConfig", "CriticConfig",
    "ImagConfig", "LossConfig", "OptimConfig", "RepoConfig", "PRESETS", "make_config", "apply_preset",
    "config_from_dict", "config_to_dict", "set_path", "get_path",
]


def _f(default: Any, help: str, **kw: Any) -> Any:
    """Dataclass field with a one-line help string in ``metadata["help"]``."""
    if isinstance(default, (list, dict, set)) or is_dataclass(default):
        d = default
        return field(default_factory=lambda: dataclasses.replace(d) if is_dataclass(d) else type(d)(d),
                     metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


@dataclass
class RSSMConfig:
    deter: int = _f(2048, "deterministic state size h (block GRU width)")
    hidden: int = _f(256, "hidden width of RSSM input/prior/posterior layers")
    stoch: int = _f(32, "number of categorical latent groups")
    classes: int = _f(16, "classes per latent group C")
    blocks: int = _f(8, "GRU blocks g (block-diagonal weights); 1 = dense GRU")
    unimix: float = _f(0.01, "uniform mixture on latent categoricals")
    prior_layers: int = _f(2, "hidden layers of the prior p(z|h)")
    post_layers: int = _f(1, "hidden layers of the posterior q(z|h,x)")
    dyn_layers: int = _f(1, "BlockLinear+norm+SiLU layers inside the core before the gate layer")


@dataclass
class EncoderConfig:
    cnn_depth: int = _f(16, "CNN base depth d; channels d*(2,3,4,4)")
    cnn_mults: tuple = _f((2, 3, 4, 4), "CNN channel multipliers per stage")
    kernel: int = _f(5, "CNN kernel size")
    mlp_units: int = _f(256, "units of the vector-observation MLP")
    mlp_layers: int = _f(3, "layers of the vector-observation MLP")
    symlog_inputs: bool = _f(True, "apply symlog to vector observations")


@dataclass
class DecoderConfig:
    cnn_depth: int = _f(16, "CNN base depth d of the image decoder")
    cnn_mults: tuple = _f((2, 3, 4, 4), "CNN channel multipliers (mirrored)")
    kernel: int = _f(5, "CNN kernel size")
    mlp_units: int = _f(256, "units of the vector decoder MLP")
    mlp_layers: int = _f(3, "layers of the vector decoder MLP")


@dataclass
class HeadsConfig:
    units: int = _f(256, "units of reward/continue heads")
    reward_layers: int = _f(1, "hidden layers of the reward head")
    cont_layers: int = _f(1, "hidden layers of the continue head")
    bins: str = _f("symlog", "twohot bins: 'symlog' (notes/V1: symlog-space bins) | 'symexp' (V2: raw-space bins)")
    num_bins: int = _f(255, "number of twohot bins")
    bin_range: float = _f(20.0, "bins span linspace(-r, r) before the optional symexp")


@dataclass
class ActorConfig:
    units: int = _f(256, "actor MLP units")
    layers: int = _f(3, "actor hidden layers")
    entropy: float = _f(3e-4, "entropy bonus scale eta")
    unimix: float = _f(0.01, "uniform mixture on the discrete action distribution (notes)")
    min_std: float = _f(0.1, "continuous actor: minimum std")
    max_std: float = _f(1.0, "continuous actor: maximum std")
    init_scale: float = _f(0.01, "continuous actor: output layer init scale")


@dataclass
class CriticConfig:
    units: int = _f(256, "critic MLP units")
    layers: int = _f(3, "critic hidden layers")
    slow_rate: float = _f(0.02, "slow critic EMA rate per update")
    slow_every: int = _f(1, "update the slow critic every N updates")
    slow_reg: float = _f(1.0, "scale of the CE(v, sg v_slow) regulariser")


@dataclass
class ImagConfig:
    horizon: int = _f(15, "imagination horizon H (H+1 states incl. start)")
    gamma: float = _f(1.0 - 1.0 / 333.0, "discount gamma")
    lam: float = _f(0.95, "lambda of the lambda-return")
    retnorm_decay: float = _f(0.99, "EMA decay of the return scale S")
    retnorm_low: float = _f(5.0, "lower return percentile")
    retnorm_high: float = _f(95.0, "upper return percentile")
    retnorm_limit: float = _f(1.0, "advantage divided by max(limit, S)")


@dataclass
class LossConfig:
    pred: float = _f(1.0, "beta_pred: scale of reconstruction, reward and continue losses")
    dyn: float = _f(1.0, "beta_dyn: scale of KL[sg(q)||p]")
    rep: float = _f(0.1, "beta_rep: scale of KL[q||sg(p)] (notes: 0.1)")
    free_bits: float = _f(1.0, "free bits (nats) per (batch, time) element")
    actor: float = _f(1.0, "actor loss scale")
    critic: float = _f(1.0, "critic loss scale")


@dataclass
class OptimConfig:
    kind: str = _f("laprop", "optimiser: 'laprop' (V2) | 'adam' (V1)")
    lr: float = _f(4e-5, "LaProp learning rate")
    eps: float = _f(1e-20, "LaProp RMS epsilon")
    beta1: float = _f(0.9, "momentum decay")
    beta2: float = _f(0.999, "second-moment decay")
    agc: float = _f(0.3, "adaptive gradient clipping ratio (0 disables)")
    agc_pmin: float = _f(1e-3, "AGC lower bound on the parameter norm")
    warmup: int = _f(1000, "linear learning-rate warm-up in updates")
    # V1 Adam settings (used when kind == "adam")
    model_lr: float = _f(1e-4, "V1 Adam: world model learning rate")
    model_eps: float = _f(1e-8, "V1 Adam: world model epsilon")
    model_clip: float = _f(1000.0, "V1 Adam: world model global grad-norm clip")
    ac_lr: float = _f(3e-5, "V1 Adam: actor and critic learning rate")
    ac_eps: float = _f(1e-5, "V1 Adam: actor and critic epsilon")
    ac_clip: float = _f(100.0, "V1 Adam: actor and critic global grad-norm clip")


@dataclass
class RepoConfig:
    epsilon: float = _f(3.0, "RePo KL budget epsilon in nats per step")
    alpha: float = _f(5.0 / 6.0, "RePo KL balance alpha")
    beta_init: float = _f(1e-3, "RePo initial Lagrange multiplier beta")
    beta_lr: float = _f(1e-3, "RePo Adam lr on log beta")
    beta_min: float = _f(1e-4, "RePo clamp: minimum beta")
    beta_max: float = _f(10.0, "RePo clamp: maximum beta")
    kl_ema: float = _f(0.0, "RePo: EMA decay of the KL used for the dual step (0 = off)")


@dataclass
class Config:
    # ---- run ----
    env: str = _f("ALE/Asterix-v5", "environment id")
    preset: str = _f("size12m", "model size preset (size1m..size400m)")
    steps: int = _f(110_000, "policy (agent) steps to train, after action repeat (Atari100k: 110k)")
    logdir: str = _f("", "run directory; empty -> runs/<env>-<timestamp>")
    seed: int = _f(0, "random seed")
    device: str = _f("auto", "device: auto | cpu | cuda")
    eval_every: int = _f(10_000, "policy steps between evaluations (0 disables)")
    eval_episodes: int = _f(10, "episodes per evaluation")
    log_every: int = _f(1_000, "policy steps between metric logs")
    num_envs: int = _f(1, "parallel environments")
    action_repeat: int = _f(4, "env frames per policy step")
    # ---- run management ----
    checkpoint_every: int = _f(10_000, "policy steps between checkpoints (0: only at the end)")
    checkpoint_keep: int = _f(2, "newest checkpoints kept in <logdir>/checkpoints")
    resume: bool = _f(False, "continue the run in --logdir from its latest checkpoint (fresh start if it has none)")
    tensorboard: bool = _f(True, "write TensorBoard event files into the run directory")
    media_every: int = _f(10_000, "policy steps between reconstruction images and eval episode GIFs (image obs; 0 off)")
    video_frames: int = _f(500, "maximum frames of a logged eval episode GIF")
    # ---- training ----
    train_ratio: float = _f(256.0, "replayed steps per policy step (V2 256, V1 1024)")
    batch_size: int = _f(16, "batch size B")
    batch_length: int = _f(64, "sequence length T")
    replay_capacity: int = _f(5_000_000, "replay capacity in steps")
    replay_online: bool = _f(True, "V2 online queue: each fresh window is sampled once first")
    backend: str = _f("kernels", "ops backend: kernels | reference")
    objective: str = _f("dreamer", "world-model objective: dreamer | repo")
    norm: str = _f("rms", "hidden-layer norm: 'rms' (V2, eps 1e-4) | 'layer' (V1, eps 1e-3)")
    precision: str = _f("fp32", "compute precision (fp32 only for now)")
    # ---- model ----
    rssm: RSSMConfig = _sub(RSSMConfig, "RSSM world-model core")
    encoder: EncoderConfig = _sub(EncoderConfig, "observation encoders")
    decoder: DecoderConfig = _sub(DecoderConfig, "observation decoders")
    heads: HeadsConfig = _sub(HeadsConfig, "reward and continue heads, twohot bins")
    actor: ActorConfig = _sub(ActorConfig, "actor network")
    critic: CriticConfig = _sub(CriticConfig, "critic network and slow critic")
    imag: ImagConfig = _sub(ImagConfig, "imagination, returns and return normalisation")
    loss: LossConfig = _sub(LossConfig, "loss scales and free bits")
    optim: OptimConfig = _sub(OptimConfig, "optimiser")
    repo: RepoConfig = _sub(RepoConfig, "RePo objective settings")

    def validate(self) -> "Config":
        """Raise ``ValueError`` naming the offending field; return self when valid."""
        _validate(self)
        return self

    def to_dict(self) -> dict:
        return config_to_dict(self)


# preset -> (deter, hidden, classes, cnn depth, units)
PRESETS: dict[str, dict[str, int]] = {
    name: dict(deter=d, hidden=h, classes=c, depth=cd, units=u)
    for name, (d, h, c, cd, u) in {
        "size1m": (512, 64, 4, 4, 64),
        "size12m": (2048, 256, 16, 16, 256),
        "size25m": (3072, 384, 24, 24, 384),
        "size50m": (4096, 512, 32, 32, 512),
        "size100m": (6144, 768, 48, 48, 768),
        "size200m": (8192, 1024, 64, 64, 1024),
        "size400m": (12288, 1536, 96, 96, 1536),
    }.items()
}


def apply_preset(cfg: Config, name: str) -> Config:
    """Set the size fields of ``cfg`` (in place) from ``PRESETS[name]``; returns cfg."""
    if name not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[name]
    cfg.preset = name
    cfg.rssm.deter, cfg.rssm.hidden, cfg.rssm.classes = p["deter"], p["hidden"], p["classes"]
    cfg.encoder.cnn_depth = cfg.decoder.cnn_depth = p["depth"]
    for sub in (cfg.encoder, cfg.decoder):
        sub.mlp_units = p["units"]
    cfg.heads.units = cfg.actor.units = cfg.critic.units = p["units"]
    return cfg


def get_path(cfg: Any, path: str) -> Any:
    """Value at dotted ``path`` (e.g. ``"rssm.deter"``)."""
    obj = cfg
    for part in path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{path}: no such config field")
        obj = getattr(obj, part)
    return obj


def set_path(cfg: Any, path: str, value: Any, _prefix: str = "") -> None:
    """Set dotted ``path`` to ``value`` (coerced to the field's current type); a dict sets a section's fields."""
    if _prefix:
        full = _prefix + "." + path
        obj = cfg
        for part in path.split(".")[:-1]:
            obj = getattr(obj, part, None)
        if obj is None or path.split(".")[-1] not in {f.name for f in fields(obj)}:
            raise ValueError(f"{full}: no such config field")
    parts = path.split(".")
    obj = cfg
    for part in parts[:-1]:
        if not hasattr(obj, part) or not is_dataclass(getattr(obj, part)):
            raise ValueError(f"{path}: no such config section {part!r}")
        obj = getattr(obj, part)
    name = parts[-1]
    if name not in {f.name for f in fields(obj)}:
        raise ValueError(f"{path}: no such config field")
    old = getattr(obj, name)
    if is_dataclass(old):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a dict for a config section, got {type(value).__name__}")
        for k, v in value.items():
            set_path(old, k, v, _prefix=(_prefix + "." if _prefix else "") + path)
        return
    setattr(obj, name, _coerce(old, value, path))


def _coerce(old: Any, value: Any, path: str) -> Any:
    try:
        if isinstance(old, bool):
            if isinstance(value, str):
                low = value.lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(old, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if isinstance(old, float):
            return float(value)
        if isinstance(old, tuple):
            if isinstance(value, str):
                value = [int(v) for v in value.split(",") if v.strip()]
            return tuple(value)
        if isinstance(old, str):
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: cannot convert {value!r} to {type(old).__name__}") from None
    return value


def make_config(preset: str | None = None, **overrides: Any) -> Config:
    """Build a validated :class:`Config`: defaults → preset → overrides.

    Overrides are top-level field names, ``section__field`` (double underscore) or a dict for a section,
    e.g. ``make_config("size1m", rssm={"deter": 64}, imag__horizon=5, batch_size=4)``.
    """
    cfg = Config()
    name = preset if preset is not None else overrides.pop("preset", cfg.preset)
    overrides.pop("preset", None)
    apply_preset(cfg, name)
    for key, value in overrides.items():
        set_path(cfg, key.replace("__", "."), value)
    return cfg.validate()


def config_to_dict(cfg: Config) -> dict:
    """JSON-safe nested dict (tuples become lists)."""
    def conv(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x
    return conv(dataclasses.asdict(cfg))


def config_from_dict(d: dict) -> Config:
    """Inverse of :func:`config_to_dict` / ``dataclasses.asdict``; unknown keys raise ValueError."""
    cfg = Config()
    for key, value in d.items():
        set_path(cfg, key, value)
    return cfg.validate()


def _validate(cfg: Config) -> None:
    def pos(path: str, allow_zero: bool = False) -> None:
        v = get_path(cfg, path)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (v == 0 and not allow_zero):
            raise ValueError(f"{path}: must be {'non-negative' if allow_zero else 'positive'}, got {v!r}")

    def prob(path: str, lo_open: bool = False, hi_open: bool = False) -> None:
        v = get_path(cfg, path)
        if not (0.0 <= v <= 1.0) or (lo_open and v == 0) or (hi_open and v == 1):
            raise ValueError(f"{path}: must be in {'(' if lo_open else '['}0, 1{')' if hi_open else ']'}, got {v!r}")

    def choice(path: str, options: tuple) -> None:
        v = get_path(cfg, path)
        if v not in options:
            raise ValueError(f"{path}: must be one of {options}, got {v!r}")

    if cfg.preset not in PRESETS:
        raise ValueError(f"preset: unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    if not cfg.env:
        raise ValueError("env: must be non-empty")
    choice("device", ("auto", "cpu", "cuda"))
    choice("backend", ("kernels", "reference"))
    choice("objective", ("dreamer", "repo"))
    choice("norm", ("rms", "layer"))
    choice("precision", ("fp32",))
    choice("heads.bins", ("symlog", "symexp"))
    choice("optim.kind", ("laprop", "adam"))
    for p in ("steps", "checkpoint_keep", "video_frames", "eval_episodes", "log_every", "num_envs", "action_repeat",
              "train_ratio", "batch_size",
              "batch_length", "replay_capacity", "rssm.deter", "rssm.hidden", "rssm.stoch", "rssm.classes",
              "rssm.blocks", "rssm.prior_layers", "rssm.post_layers", "encoder.cnn_depth", "encoder.kernel",
              "encoder.mlp_units", "encoder.mlp_layers", "decoder.cnn_depth", "decoder.kernel", "decoder.mlp_units",
              "decoder.mlp_layers", "heads.units", "heads.reward_layers", "heads.cont_layers", "heads.bin_range",
              "actor.units", "actor.layers", "actor.min_std", "actor.init_scale", "critic.units", "critic.layers",
              "critic.slow_every", "imag.horizon", "optim.lr", "optim.eps", "optim.model_lr", "optim.model_eps",
              "optim.ac_lr", "optim.ac_eps", "optim.agc_pmin", "repo.beta_init", "repo.beta_lr", "repo.beta_min",
              "repo.beta_max"):
        pos(p)
    for p in ("eval_every", "checkpoint_every", "media_every", "rssm.dyn_layers", "loss.pred", "loss.dyn", "loss.rep",
              "loss.free_bits",
              "loss.actor", "loss.critic", "actor.entropy", "critic.slow_reg", "optim.agc", "optim.warmup",
              "optim.model_clip", "optim.ac_clip", "imag.retnorm_limit", "repo.epsilon"):
        pos(p, allow_zero=True)
    for p in ("rssm.unimix", "actor.unimix", "critic.slow_rate", "imag.gamma", "imag.lam", "imag.retnorm_decay",
              "optim.beta1", "repo.alpha", "repo.kl_ema"):
        prob(p)
    prob("optim.beta2", hi_open=True)
    if cfg.heads.num_bins < 2:
        raise ValueError(f"heads.num_bins: must be >= 2, got {cfg.heads.num_bins}")
    if cfg.rssm.unimix >= 1.0:
        raise ValueError("rssm.unimix: must be < 1")
    if cfg.rssm.deter % cfg.rssm.blocks:
        raise ValueError(f"rssm.deter: {cfg.rssm.deter} is not divisible by rssm.blocks={cfg.rssm.blocks}")
    if cfg.actor.max_std <= cfg.actor.min_std:
        raise ValueError("actor.max_std: must exceed actor.min_std")
    if not (0.0 <= cfg.imag.retnorm_low < cfg.imag.retnorm_high <= 100.0):
        raise ValueError("imag.retnorm_low: need 0 <= retnorm_low < retnorm_high <= 100")
    for sec in ("encoder", "decoder"):
        mults = get_path(cfg, f"{sec}.cnn_mults")
        if len(mults) != 4 or any((not isinstance(m, int)) or m <= 0 for m in mults):
            raise ValueError(f"{sec}.cnn_mults: need 4 positive ints (64x64 -> 4x4), got {mults!r}")
    for sec in ("encoder", "decoder"):
        if get_path(cfg, f"{sec}.kernel") % 2 == 0:
            raise ValueError(f"{sec}.kernel: must be odd for 'same' padding")
    if cfg.repo.beta_min >= cfg.repo.beta_max:
        raise ValueError("repo.beta_min: must be below repo.beta_max")


def dumps(cfg: Config) -> str:
    """JSON text of a config."""
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=True)
