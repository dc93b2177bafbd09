import dataclasses
import json

import pytest

from dreamer_ext.config import (PRESETS, Config, apply_preset, config_from_dict, config_to_dict, get_path,
                                make_config, set_path)


def test_defaults_match_spec():
    c = make_config()
    assert c.env == "ALE/Asterix-v5" and c.preset == "size12m" and c.steps == 110_000
    assert (c.rssm.deter, c.rssm.hidden, c.rssm.classes, c.rssm.stoch, c.rssm.blocks) == (2048, 256, 16, 32, 8)
    assert c.rssm.unimix == 0.01 and c.loss.dyn == 1.0 and c.loss.rep == 0.1 and c.loss.free_bits == 1.0
    assert c.imag.gamma == pytest.approx(1 - 1 / 333) and c.imag.lam == 0.95 and c.imag.horizon == 15
    assert (c.optim.kind, c.optim.lr, c.optim.eps, c.optim.agc, c.optim.warmup) == ("laprop", 4e-5, 1e-20, 0.3, 1000)
    assert c.heads.bins == "symlog" and c.heads.num_bins == 255 and c.critic.slow_rate == 0.02
    assert c.actor.entropy == 3e-4 and c.batch_size == 16 and c.batch_length == 64 and c.train_ratio == 256


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_apply(name):
    c = make_config(name)
    p = PRESETS[name]
    assert (c.rssm.deter, c.rssm.hidden, c.rssm.classes) == (p["deter"], p["hidden"], p["classes"])
    assert c.encoder.cnn_depth == c.decoder.cnn_depth == p["depth"]
    assert c.actor.units == c.critic.units == c.heads.units == c.encoder.mlp_units == p["units"]
    assert c.preset == name


def test_preset_table_values():
    assert PRESETS["size1m"] == dict(deter=512, hidden=64, classes=4, depth=4, units=64)
    assert PRESETS["size400m"] == dict(deter=12288, hidden=1536, classes=96, depth=96, units=1536)


def test_overrides_nested_and_dunder():
    c = make_config("size1m", rssm={"deter": 64}, imag__horizon=5, batch_size=4)
    assert c.rssm.deter == 64 and c.rssm.hidden == 64 and c.imag.horizon == 5 and c.batch_size == 4
    c2 = make_config(preset="size25m")
    assert c2.rssm.deter == 3072


@pytest.mark.parametrize("kw, field", [
    (dict(preset="size3m"), "preset"),
    (dict(rssm__deter=100), "rssm.deter"),
    (dict(batch_size=0), "batch_size"),
    (dict(rssm__hidden=-1), "rssm.hidden"),
    (dict(device="tpu"), "device"),
    (dict(optim__kind="sgd"), "optim.kind"),
    (dict(heads__bins="linear"), "heads.bins"),
    (dict(imag__gamma=1.5), "imag.gamma"),
    (dict(backend="fast"), "backend"),
])
def test_validate_names_field(kw, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_config(**kw)


def test_unknown_field_rejected():
    with pytest.raises(ValueError, match="no_such"):
        make_config(no_such=1)
    with pytest.raises(ValueError, match="rssm.nope"):
        make_config(rssm={"nope": 1})


def test_json_round_trip():
    c = make_config("size1m", rssm={"deter": 64}, norm="layer", objective="repo")
    d = json.loads(json.dumps(dataclasses.asdict(c)))
    assert config_from_dict(d) == c
    assert config_from_dict(config_to_dict(c)) == c
    with pytest.raises(ValueError):
        config_from_dict({"bogus": 3})


def test_every_field_has_help():
    def walk(obj, prefix=""):
        for f in dataclasses.fields(obj):
            assert isinstance(f.metadata.get("help"), str) and f.metadata["help"], prefix + f.name
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, prefix + f.name + ".")
    walk(Config())


def test_set_get_path_coercion():
    c = Config()
    set_path(c, "rssm.deter", "1024")
    set_path(c, "replay_online", "false")
    set_path(c, "train_ratio", "512")
    assert get_path(c, "rssm.deter") == 1024 and c.replay_online is False and c.train_ratio == 512.0
    with pytest.raises(ValueError, match="batch_size"):
        set_path(c, "batch_size", "abc")
    apply_preset(c, "size50m")
    assert c.rssm.deter == 4096
