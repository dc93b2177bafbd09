"""Tiny model configs and synthetic batches shared by the algorithm tests (not a test module)."""
from __future__ import annotations

import torch

from dreamer_ext.config import make_config
from dreamer_ext.envs.spec import EnvSpec


def tiny_config(**overrides):
    """A few-thousand-parameter model that still exercises every code path. Replay context is off here so that
    :func:`random_batch` windows train as they are; ``test_replay_context`` covers it (pass ``replay_context=1``)."""
    base = dict(
        rssm={"deter": 32, "hidden": 16, "stoch": 4, "classes": 4, "blocks": 4},
        encoder={"cnn_depth": 2, "mlp_units": 16, "mlp_layers": 2},
        decoder={"cnn_depth": 2, "mlp_units": 16, "mlp_layers": 2},
        heads={"units": 16},
        actor={"units": 16, "layers": 2},
        critic={"units": 16, "layers": 2},
        imag={"horizon": 4},
        optim={"warmup": 1},
        device="cpu",
        replay_context=0,
    )
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return make_config("size1m", **base)


def image_vector_spec(discrete: bool = True, act_dim: int = 3) -> EnvSpec:
    return EnvSpec(obs={"image": ((64, 64, 3), "uint8"), "vector": ((5,), "float32")}, act_dim=act_dim,
                   discrete=discrete)


def vector_spec(discrete: bool = True, act_dim: int = 3, dim: int = 5) -> EnvSpec:
    return EnvSpec(obs={"vector": ((dim,), "float32")}, act_dim=act_dim, discrete=discrete)


def random_batch(spec: EnvSpec, B: int = 2, T: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in spec.obs.items():
        if dtype == "uint8":
            out[key] = torch.randint(0, 256, (B, T, *shape), dtype=torch.uint8, generator=g)
        else:
            out[key] = torch.randn(B, T, *shape, generator=g) * 3
    if spec.discrete:
        out["action"] = torch.nn.functional.one_hot(torch.randint(0, spec.act_dim, (B, T), generator=g),
                                                    spec.act_dim).float()
    else:
        out["action"] = torch.rand(B, T, spec.act_dim, generator=g) * 2 - 1
    out["reward"] = torch.randn(B, T, generator=g)
    out["is_first"] = torch.zeros(B, T, dtype=torch.bool)
    out["is_first"][:, 0] = True
    out["is_terminal"] = torch.zeros(B, T, dtype=torch.bool)
    out["is_terminal"][0, -1] = True
    out["is_last"] = out["is_terminal"].clone()
    return out
