"""Typed configuration for dreamer_ext: nested dataclasses, size presets, validation, JSON round-trip.

Every field is declared with :func:`_f`: a default, a one-line help (read by the CLI generator) and the field's own
check (``positive``, ``in_range(...)``, ``one_of(...)``, ...), so a new field cannot escape validation.
:meth:`Config.validate` runs every field's type and value check (floats must also be finite), then the few checks
that relate two fields. Nested fields are addressed with dotted paths (``rssm.deter``); :func:`set_path` /
:func:`get_path` do that, and :func:`parse_value` is the one string/JSON -> field-value converter (the CLI uses it too).

Defaults are DreamerV3 V2 behaviour except where ``dreamerv3.md`` marks the project's notes (symlog twohot bins,
β_rep = 0.1, actor unimix, explicit γ). V1 behaviour is reachable through switches (``norm="layer"``,
``optim.kind="adam"``); ``heads.bins="symexp"`` selects the V2 raw-space bins.

Units: ``steps``, ``eval_every``, ``log_every``, ``checkpoint_every`` and ``media_every`` count **env steps**: agent
decisions summed over the ``num_envs`` training environments (after action repeat: on Atari one env step is
``action_repeat`` emulator frames, so Atari100k's 110k env steps are 440k frames).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable

__all__ = [
    "Config", "RSSMConfig", "EncoderConfig", "DecoderConfig", "HeadsConfig", "ActorConfig", "CriticConfig",
    "ImagConfig", "LossConfig", "OptimConfig", "PRESETS", "make_config", "apply_preset", "config_from_dict",
    "config_to_dict", "set_path", "get_path", "parse_value", "iter_leaves", "loss_scales", "option", "check_fields",
]

# ----------------------------------------------------------------------------------------------------- field checks
# A check takes the value and returns None when it is fine, else the reason (the field's dotted name is prefixed).
Check = Callable[[Any], "str | None"]


def positive(v) -> str | None:
    return None if v > 0 else f"must be positive, got {v!r}"


def non_negative(v) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v!r}"


def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Check:
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v):
        ok = (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {text}, got {v!r}"
    return check


def at_least(n: int) -> Check:
    return lambda v: None if v >= n else f"must be >= {n}, got {v!r}"


def one_of(*options, hints: dict | None = None) -> Check:
    def check(v):
        if v in options:
            return None
        if hints and v in hints:
            return hints[v]
        return f"must be one of {options}, got {v!r}"
    return check


def non_empty(v) -> str | None:
    return None if v else "must be non-empty"


def odd_positive(v) -> str | None:
    return None if v > 0 and v % 2 == 1 else f"must be a positive odd number ('same' padding), got {v!r}"


def four_positive(v) -> str | None:
    ok = len(v) == 4 and all(isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in v)
    return None if ok else f"need 4 positive ints (64x64 -> 4x4), got {v!r}"


def device_name(v) -> str | None:
    return None if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v) else \
        f"expected auto | cpu | cuda | cuda:N, got {v!r}"


def _preset_name(v) -> str | None:
    return None if v in PRESETS else f"unknown preset {v!r}; choose one of {sorted(PRESETS)}"


def option(default: Any, help: str, check: Check | None = None) -> Any:
    """A dataclass field of an options class (the config, the evaluate program's options): default, one-line help
    (``metadata["help"]``, read by the CLI) and its own check (``metadata["check"]``, run by :func:`check_fields`)."""
    return field(default=default, metadata={"help": help, "check": check})


def _sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


# ---------------------------------------------------------------------------------------------------------- sections
@dataclass
class RSSMConfig:
    deter: int = option(2048, "deterministic state size h (block GRU width)", positive)
    hidden: int = option(256, "hidden width of RSSM input/prior/posterior layers", positive)
    stoch: int = option(32, "number of categorical latent groups", positive)
    classes: int = option(16, "classes per latent group C", positive)
    blocks: int = option(8, "GRU blocks g (block-diagonal weights); 1 = dense GRU", positive)
    unimix: float = option(0.01, "uniform mixture on latent categoricals", in_range(0, 1, hi_open=True))
    prior_layers: int = option(2, "hidden layers of the prior p(z|h)", positive)
    post_layers: int = option(1, "hidden layers of the posterior q(z|h,x)", positive)
    dyn_layers: int = option(1, "BlockLinear+norm+SiLU layers inside the core before the gate layer", non_negative)


@dataclass
class EncoderConfig:
    cnn_depth: int = option(16, "CNN base depth d; channels d*(2,3,4,4)", positive)
    cnn_mults: tuple = option((2, 3, 4, 4), "CNN channel multipliers per stage", four_positive)
    kernel: int = option(5, "CNN kernel size", odd_positive)
    mlp_units: int = option(256, "units of the vector-observation MLP", positive)
    mlp_layers: int = option(3, "layers of the vector-observation MLP", positive)
    symlog_inputs: bool = option(True, "apply symlog to vector observations")


@dataclass
class DecoderConfig:
    cnn_depth: int = option(16, "CNN base depth d of the image decoder", positive)
    cnn_mults: tuple = option((2, 3, 4, 4), "CNN channel multipliers (mirrored)", four_positive)
    kernel: int = option(5, "CNN kernel size", odd_positive)
    mlp_units: int = option(256, "units of the vector decoder MLP", positive)
    mlp_layers: int = option(3, "layers of the vector decoder MLP", positive)
    vector_half: bool = option(False, "vector observations: loss ½(f - symlog y)² (notes) instead of (f - symlog y)² (V2)")
    bspace: int = option(8, "V2 image-decoder input: each of g deter blocks feeds its own channel group (0: one dense "
                        "Linear from feat, the earlier layout)", non_negative)


@dataclass
class HeadsConfig:
    units: int = option(256, "units of reward/continue heads", positive)
    reward_layers: int = option(1, "hidden layers of the reward head", positive)
    cont_layers: int = option(1, "hidden layers of the continue head", positive)
    bins: str = option("symexp", "twohot bins: 'symexp' (V2: raw-space bins, unbiased mean) | 'symlog' (notes/V1: "
                             "symlog-space bins, symexp of the mean)", one_of("symlog", "symexp"))
    num_bins: int = option(255, "number of twohot bins", at_least(2))
    bin_range: float = option(20.0, "bins span linspace(-r, r) before the optional symexp", positive)


@dataclass
class ActorConfig:
    units: int = option(256, "actor MLP units", positive)
    layers: int = option(3, "actor hidden layers", positive)
    entropy: float = option(3e-4, "entropy bonus scale eta", non_negative)
    unimix: float = option(0.0, "uniform mixture on the discrete action distribution (V2: 0; notes: 0.01)",
                       in_range(0, 1))
    min_std: float = option(0.1, "continuous actor: minimum std", positive)
    max_std: float = option(1.0, "continuous actor: maximum std (must exceed min_std)", positive)
    init_scale: float = option(0.01, "actor output layer init scale (V2 outscale: std x 0.01)", positive)


@dataclass
class CriticConfig:
    units: int = option(256, "critic MLP units", positive)
    layers: int = option(3, "critic hidden layers", positive)
    slow_rate: float = option(0.02, "slow critic EMA rate per update", in_range(0, 1))
    slow_every: int = option(1, "update the slow critic every N updates", positive)
    slow_reg: float = option(1.0, "scale of the CE(v, sg v_slow) regulariser", non_negative)
    repval_grad: bool = option(True, "V2: the replay-value loss's gradient also reaches the encoder and RSSM")


@dataclass
class ImagConfig:
    horizon: int = option(15, "imagination horizon H (H+1 states incl. start)", positive)
    gamma: float = option(1.0 - 1.0 / 333.0, "discount gamma", in_range(0, 1))
    contdisc: bool = option(True, "V2: continue target (1-terminal)*gamma, imagination discounts by the continue "
                              "probability; false (notes): target 1-terminal, hard 0/1 continue times gamma")
    lam: float = option(0.95, "lambda of the lambda-return", in_range(0, 1))
    retnorm_decay: float = option(0.99, "EMA decay of the return scale S", in_range(0, 1))
    retnorm_low: float = option(5.0, "lower return percentile (below retnorm_high)", in_range(0, 100))
    retnorm_high: float = option(95.0, "upper return percentile", in_range(0, 100))
    retnorm_limit: float = option(1.0, "advantage divided by max(limit, S)", non_negative)


@dataclass
class LossConfig:
    """One scale per loss term: the agent's loss is ``Σ_k scale_k · mean(term_k)`` over exactly these keys."""

    rec: float = option(1.0, "scale of the reconstruction loss (sum over observation keys)", non_negative)
    rew: float = option(1.0, "scale of the reward loss", non_negative)
    con: float = option(1.0, "scale of the continue loss", non_negative)
    dyn: float = option(1.0, "beta_dyn: scale of max(free_bits, KL[sg(q)||p])", non_negative)
    rep: float = option(0.1, "beta_rep: scale of max(free_bits, KL[q||sg(p)]) (notes: 0.1)", non_negative)
    actor: float = option(1.0, "actor loss scale", non_negative)
    critic: float = option(1.0, "critic loss scale", non_negative)
    repval: float = option(0.3, "V2 replay-value loss scale: the critic on replayed states (0 turns the term off, as in V1)",
                       non_negative)
    kl: float = option(1.0, "RePo: scale of the constraint term sg(beta) (alpha KL_dyn + (1 - alpha) KL_rep - eps)",
                       non_negative)
    probe: float = option(1.0, "RePo: scale of the image/vector probe's loss (decoders on detached features, own "
                               "optimiser)", non_negative)
    free_bits: float = option(1.0, "free bits (nats) per (batch, time) element (dreamer objective; not a loss term)",
                              non_negative)


OPTIONAL_TERMS = ("repval",)  # terms that a zero scale switches off (not computed at all)
# the world-model terms each objective produces (dreamer_ext.objectives); the other LossConfig fields of this kind
# belong to the other objective and are not in its table
OBJECTIVE_TERMS = {"dreamer": ("rec", "rew", "con", "dyn", "rep"), "repo": ("rew", "con", "kl", "probe")}
BEHAVIOR_TERMS = ("actor", "critic", "repval")


def loss_scales(cfg: "Config") -> dict[str, float]:
    """The loss table's scales by term name: the objective's world-model terms (:data:`OBJECTIVE_TERMS`) and the
    behaviour terms, from the :class:`LossConfig` fields of the same names; an optional term (:data:`OPTIONAL_TERMS`)
    whose scale is 0 is left out, and the agent does not compute it."""
    names = OBJECTIVE_TERMS[cfg.objective] + BEHAVIOR_TERMS
    out = {k: float(getattr(cfg.loss, k)) for k in names}
    return {k: v for k, v in out.items() if k not in OPTIONAL_TERMS or v > 0}


@dataclass
class RepoConfig:
    """RePo (``--objective=repo``): maximise reward predictability under a KL budget, ``KL_bal <= eps`` nats per step,
    with the Lagrange multiplier beta learned by dual gradient descent on log beta."""

    eps: float = option(3.0, "KL budget epsilon in nats per step (KL summed over latent groups, mean over batch and "
                             "time); must lie below stoch * ln(classes)", positive)
    alpha: float = option(5.0 / 6.0, "balance: KL_bal = alpha KL[sg q || p] + (1 - alpha) KL[q || sg p]",
                          in_range(0, 1))
    beta_init: float = option(1e-3, "initial Lagrange multiplier beta", positive)
    beta_lr: float = option(1e-3, "Adam learning rate of log beta (the dual step)", positive)
    beta_min: float = option(1e-4, "lower clamp of beta", positive)
    beta_max: float = option(10.0, "upper clamp of beta", positive)
    kl_ema: float = option(0.0, "dual step on an EMA of KL_bal with this decay (0: the batch's own KL)",
                           in_range(0, 1, hi_open=True))
    probe_lr: float = option(1e-4, "Adam learning rate of the probe decoders (their own optimiser)", positive)


@dataclass
class OptimConfig:
    kind: str = option("laprop", "optimiser: 'laprop' (V2) | 'adam' (V1)", one_of("laprop", "adam"))
    lr: float = option(4e-5, "LaProp learning rate", positive)
    eps: float = option(1e-20, "LaProp RMS epsilon", positive)
    beta1: float = option(0.9, "momentum decay", in_range(0, 1))
    beta2: float = option(0.999, "second-moment decay", in_range(0, 1, hi_open=True))
    agc: float = option(0.3, "adaptive gradient clipping ratio (0 disables)", non_negative)
    agc_pmin: float = option(1e-3, "AGC lower bound on the parameter norm", positive)
    warmup: int = option(1000, "linear learning-rate warm-up in updates", non_negative)
    # V1 Adam settings (used when kind == "adam")
    model_lr: float = option(1e-4, "V1 Adam: world model learning rate", positive)
    model_eps: float = option(1e-8, "V1 Adam: world model epsilon", positive)
    model_clip: float = option(1000.0, "V1 Adam: world model global grad-norm clip", non_negative)
    ac_lr: float = option(3e-5, "V1 Adam: actor and critic learning rate", positive)
    ac_eps: float = option(1e-5, "V1 Adam: actor and critic epsilon", positive)
    ac_clip: float = option(100.0, "V1 Adam: actor and critic global grad-norm clip", non_negative)


def _distractor_check(v) -> str | None:
    from .envs.distractors import parse_distractor

    try:
        parse_distractor(v, name="spec")
    except ValueError as e:
        return str(e).removeprefix("spec: ")
    return None


@dataclass
class Config:
    # ---- run ----
    env: str = option("ALE/Asterix-v5", "environment id", non_empty)
    preset: str = option("size12m", "model size preset (size1m..size400m)", _preset_name)
    steps: int = option(110_000, "env steps to train, summed over envs (Atari100k: 110k)", positive)
    logdir: str = option("", "run directory; empty -> runs/<env>-<timestamp>")
    seed: int = option(0, "random seed (>= 0)", non_negative)
    device: str = option("auto", "device: auto | cpu | cuda | cuda:N", device_name)
    eval_every: int = option(10_000, "env steps between evaluations (0 disables)", non_negative)
    eval_episodes: int = option(10, "episodes per evaluation", positive)
    eval_policy: str = option("sample", "how evaluations act: 'sample' (the authors' protocol) | 'mode' (greedy)",
                          one_of("sample", "mode"))
    log_every: int = option(1_000, "env steps between metric logs", positive)
    num_envs: int = option(1, "parallel environments", positive)
    env_workers: int = option(0, "0: step the training envs in this process; N = num_envs: each in its own worker "
                                 "process (gymnasium AsyncVectorEnv), stepping while the learner updates",
                              non_negative)
    action_repeat: int = option(4, "emulator frames per env step (ALE envs only)", positive)
    distractor: str = option("none", "visual distractor of the training envs: none | gauss:SIGMA (pixel noise, 0-255 "
                                     "scale) | blackout:P (frame blacked out with probability P) | video:SEED "
                                     "(procedural moving background)", lambda v: _distractor_check(v))
    eval_distractor: str = option("", "distractor of the eval envs ('' = the same as --distractor; a video seed "
                                      "stream disjoint from training's either way)",
                                  lambda v: None if v == "" else _distractor_check(v))
    # ---- run management ----
    checkpoint_every: int = option(10_000, "env steps between checkpoints (0: only at the end)", non_negative)
    checkpoint_keep: int = option(2, "newest checkpoints kept in <logdir>/checkpoints", positive)
    resume: bool = option(False, "continue the run in --logdir from its latest checkpoint (fresh start if it has none)")
    tensorboard: bool = option(True, "write TensorBoard event files into the run directory")
    media_every: int = option(10_000, "env steps between reconstruction images and eval episode GIFs (image obs; 0 off)",
                          non_negative)
    video_frames: int = option(500, "maximum frames of a logged eval episode GIF", positive)
    # ---- training ----
    train_ratio: float = option(256.0, "replayed steps per env step (V2 256, V1 1024)", positive)
    batch_size: int = option(16, "batch size B", positive)
    batch_length: int = option(64, "sequence length T", positive)
    replay_capacity: int = option(5_000_000, "replay capacity in steps (at least max(batch_size, num_envs) * "
                                             "(batch_length + replay_context))",
                              positive)
    replay_online: bool = option(True, "V2 online queue: each fresh window is sampled once first")
    replay_context: int = option(1, "V2 replay context: 1 = replayed windows hold one extra leading step whose stored "
                                    "RSSM state (written when acting, rewritten after each update) starts the world "
                                    "model; 0 = windows of batch_length steps that start from zeros",
                             one_of(0, 1))
    backend: str = option("kernels", "ops backend: kernels | reference", one_of("kernels", "reference"))
    objective: str = option("dreamer", "world-model objective: 'dreamer' (reconstruction, reward, continue, KL with "
                                       "free bits) | 'repo' (RePo: reward and continue under a KL budget, see --repo.*)",
                        one_of("dreamer", "repo"))
    norm: str = option("rms", "hidden-layer norm: 'rms' (V2, eps 1e-4) | 'layer' (V1, eps 1e-3)", one_of("rms", "layer"))
    init: str = option("v2", "weight init: 'v2' (truncated normal, std = outscale/sqrt(fan_in), full fan-in for "
                         "block-linear layers) | 'avg' (earlier: variance scale/mean(fan_in, fan_out), per block)",
                   one_of("v2", "avg"))
    precision: str = option("auto", "compute precision of matmuls and convolutions: bf16 | fp32 | auto (bf16 where the "
                                "device computes it fast: a CUDA GPU with bf16, a CPU whose bf16 matmul measures >= 1.2x "
                                "faster than fp32)",
                        one_of("auto", "bf16", "fp32"))
    # ---- model ----
    rssm: RSSMConfig = _sub(RSSMConfig, "RSSM world-model core")
    encoder: EncoderConfig = _sub(EncoderConfig, "observation encoders")
    decoder: DecoderConfig = _sub(DecoderConfig, "observation decoders")
    heads: HeadsConfig = _sub(HeadsConfig, "reward and continue heads, twohot bins")
    actor: ActorConfig = _sub(ActorConfig, "actor network")
    critic: CriticConfig = _sub(CriticConfig, "critic network and slow critic")
    imag: ImagConfig = _sub(ImagConfig, "imagination, returns and return normalisation")
    loss: LossConfig = _sub(LossConfig, "loss scales (one per term) and free bits")
    optim: OptimConfig = _sub(OptimConfig, "optimiser")
    repo: RepoConfig = _sub(RepoConfig, "RePo objective (--objective=repo): KL budget and the dual step on beta")

    def validate(self) -> "Config":
        """Raise ``ValueError("<dotted.field>: <reason>")`` for the first invalid field; return self when valid."""
        check_fields(self)
        _check_relations(self)
        return self

    def to_dict(self) -> dict:
        return config_to_dict(self)


def check_fields(obj: Any) -> None:
    """Every leaf field of the dataclass instance ``obj``: its type (floats also finite), then its own check. Raises
    ``ValueError("<dotted.field>: <reason>")`` for the first invalid one."""
    for path, f, value in iter_leaves(obj):
        _check_type(path, value, f.default)
        check = f.metadata.get("check")
        reason = check(value) if check is not None else None
        if reason:
            raise ValueError(f"{path}: {reason}")


def _check_relations(cfg: Config) -> None:
    """The checks that relate two or more fields."""
    if cfg.rssm.deter % cfg.rssm.blocks:
        raise ValueError(f"rssm.deter: {cfg.rssm.deter} is not divisible by rssm.blocks={cfg.rssm.blocks}")
    if cfg.actor.max_std <= cfg.actor.min_std:
        raise ValueError(f"actor.max_std: must exceed actor.min_std={cfg.actor.min_std}, got {cfg.actor.max_std}")
    if cfg.imag.retnorm_low >= cfg.imag.retnorm_high:
        raise ValueError(f"imag.retnorm_low: must be below imag.retnorm_high={cfg.imag.retnorm_high}, "
                         f"got {cfg.imag.retnorm_low}")
    c0 = cfg.decoder.cnn_depth * cfg.decoder.cnn_mults[-1]
    if cfg.decoder.bspace and (cfg.rssm.deter % cfg.decoder.bspace or c0 % cfg.decoder.bspace):
        raise ValueError(f"decoder.bspace: {cfg.decoder.bspace} must divide rssm.deter={cfg.rssm.deter} and the "
                         f"decoder's {c0} grid channels (decoder.cnn_depth * cnn_mults[-1]); 0 turns it off")
    if cfg.repo.beta_min >= cfg.repo.beta_max:
        raise ValueError(f"repo.beta_max: must exceed repo.beta_min={cfg.repo.beta_min}, got {cfg.repo.beta_max}")
    if not cfg.repo.beta_min <= cfg.repo.beta_init <= cfg.repo.beta_max:
        raise ValueError(f"repo.beta_init: must lie in [repo.beta_min, repo.beta_max] = [{cfg.repo.beta_min}, "
                         f"{cfg.repo.beta_max}], got {cfg.repo.beta_init}")
    feasible = cfg.rssm.stoch * math.log(cfg.rssm.classes)
    if cfg.objective == "repo" and cfg.repo.eps >= feasible:
        raise ValueError(f"repo.eps: must lie below stoch * ln(classes) = {feasible:.1f} nats (the most information "
                         f"{cfg.rssm.stoch} latents of {cfg.rssm.classes} classes can hold), got {cfg.repo.eps}")
    if cfg.loss.repval > 0 and cfg.batch_length < 2:
        raise ValueError(f"batch_length: the replay-value loss needs windows of at least 2 steps, got "
                         f"{cfg.batch_length} (or pass --loss.repval=0)")
    if cfg.env_workers not in (0, cfg.num_envs):
        raise ValueError(f"env_workers: must be 0 (in-process) or num_envs={cfg.num_envs} (one worker process per "
                         f"env), got {cfg.env_workers}")
    need = max(cfg.batch_size, cfg.num_envs) * (cfg.batch_length + cfg.replay_context)
    if cfg.replay_capacity < need:
        raise ValueError(f"replay_capacity: must be at least max(batch_size, num_envs) * (batch_length + "
                         f"replay_context) = {need} "
                         f"(else training can never start), got {cfg.replay_capacity}")


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
    reason = _preset_name(name)
    if reason:
        raise ValueError(f"preset: {reason}")
    p = PRESETS[name]
    cfg.preset = name
    cfg.rssm.deter, cfg.rssm.hidden, cfg.rssm.classes = p["deter"], p["hidden"], p["classes"]
    cfg.encoder.cnn_depth = cfg.decoder.cnn_depth = p["depth"]
    for sub in (cfg.encoder, cfg.decoder):
        sub.mlp_units = p["units"]
    cfg.heads.units = cfg.actor.units = cfg.critic.units = p["units"]
    return cfg


# -------------------------------------------------------------------------------------------- paths and conversion
def iter_leaves(obj: Any, prefix: str = ""):
    """Yield ``(dotted_name, field, value)`` for every leaf field of a dataclass instance, depth first."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from iter_leaves(value, prefix + f.name + ".")
        else:
            yield prefix + f.name, f, value


def _kind(like: Any) -> str:
    if isinstance(like, bool):
        return "bool (true/false)"
    if isinstance(like, tuple):
        return "comma-separated list"
    return type(like).__name__


def _check_type(path: str, value: Any, like: Any) -> None:
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str),
          tuple: lambda v: isinstance(v, tuple)}[type(like)](value)
    if not ok:
        raise ValueError(f"{path}: expected {_kind(like)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: must be finite, got {value!r}")


def parse_value(value: Any, like: Any, path: str) -> Any:
    """Convert ``value`` (command-line text or a JSON value) to the type of ``like`` (the field's default).

    bool: true/false/1/0/yes/no/on/off; int: integral numbers only ("1e3" -> 1000, "1.5" is an error); float: any
    number; tuple: comma-separated text or a list; str: text. Raises ``ValueError("<path>: ...")``; range and
    finiteness are checked later by :meth:`Config.validate`.
    """
    original = value
    try:
        if isinstance(like, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            elem = like[0] if like else ""
            return tuple(parse_value(v.strip() if isinstance(v, str) else v, elem, path)
                         for v in items if not (isinstance(v, str) and not v.strip()))
        if isinstance(value, str) and not isinstance(like, str):
            text = value.strip()
            if isinstance(like, bool):
                return {"true": True, "1": True, "yes": True, "on": True,
                        "false": False, "0": False, "no": False, "off": False}[text.lower()]
            if isinstance(like, int):
                try:
                    return int(text)
                except ValueError:
                    value = float(text)  # "1e3"; checked to be integral below
            else:
                return float(text)
        if isinstance(like, bool):
            if isinstance(value, bool):
                return value
        elif isinstance(like, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif isinstance(like, float):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif isinstance(like, str):
            if isinstance(value, str):
                return value
        else:
            raise ValueError(f"{path}: unsupported field type {type(like).__name__}")
    except (KeyError, ValueError, TypeError, OverflowError) as e:
        if str(e).startswith(f"{path}:"):
            raise
    raise ValueError(f"{path}: invalid {_kind(like)} value {original!r}") from None


def get_path(cfg: Any, path: str) -> Any:
    """Value at dotted ``path`` (e.g. ``"rssm.deter"``)."""
    obj = cfg
    for part in path.split("."):
        if not is_dataclass(obj) or part not in {f.name for f in fields(obj)}:
            raise ValueError(f"{path}: no such config field")
        obj = getattr(obj, part)
    return obj


def set_path(cfg: Any, path: str, value: Any) -> None:
    """Set dotted ``path`` to ``value`` converted by :func:`parse_value`; a dict sets a section's fields."""
    *parents, name = path.split(".")
    obj = cfg
    for part in parents:
        sub = getattr(obj, part, None) if is_dataclass(obj) and part in {f.name for f in fields(obj)} else None
        if not is_dataclass(sub):
            raise ValueError(f"{path}: no such config section {part!r}")
        obj = sub
    if name not in {f.name for f in fields(obj)}:
        raise ValueError(f"{path}: no such config field")
    old = getattr(obj, name)
    if is_dataclass(old):
        if not isinstance(value, dict):
            raise ValueError(f"{path}: expected a dict for a config section, got {type(value).__name__}")
        for k, v in value.items():
            set_path(cfg, f"{path}.{k}", v)
        return
    setattr(obj, name, parse_value(value, old, path))


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


def _upgrade(d: dict) -> dict:
    """Configs saved by earlier versions: ``loss.pred`` (one scale for rec, rew and con) becomes the three scales;
    a ``repo`` section of a run that did not use RePo is dropped (the earlier, never-trained design had one); a full config without ``replay_context`` was trained (and its replay
    stored) without it, so it gets 0."""
    d = dict(d)
    if d.get("objective") != "repo":  # the earlier, never-trained RePo section, or defaults a dreamer run does not use
        d.pop("repo", None)
    if "replay_online" in d and "replay_context" not in d:
        d["replay_context"] = 0
    if isinstance(d.get("loss"), dict) and "pred" in d["loss"]:
        loss = dict(d["loss"])
        pred = loss.pop("pred")
        for k in ("rec", "rew", "con"):
            loss.setdefault(k, pred)
        d["loss"] = loss
    return d


def config_from_dict(d: dict) -> Config:
    """Inverse of :func:`config_to_dict` (also reads configs saved by earlier versions); unknown keys raise
    ValueError."""
    cfg = Config()
    for key, value in _upgrade(d).items():
        set_path(cfg, key, value)
    return cfg.validate()
