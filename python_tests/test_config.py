import dataclasses
import json

import pytest

from dreamer_ext.config import (PRESETS, Config, apply_preset, config_from_dict, config_to_dict, get_path,
                                iter_leaves, make_config, parse_value, set_path)


def test_defaults_match_spec():
    c = make_config()
    assert c.env == "ALE/Asterix-v5" and c.preset == "size12m" and c.steps == 110_000
    assert (c.rssm.deter, c.rssm.hidden, c.rssm.classes, c.rssm.stoch, c.rssm.blocks) == (2048, 256, 16, 32, 8)
    assert c.rssm.unimix == 0.01 and c.loss.dyn == 1.0 and c.loss.rep == 0.1 and c.loss.free_bits == 1.0
    assert c.imag.gamma == pytest.approx(1 - 1 / 333) and c.imag.lam == 0.95 and c.imag.horizon == 15
    assert (c.optim.kind, c.optim.lr, c.optim.eps, c.optim.agc, c.optim.warmup) == ("laprop", 4e-5, 1e-20, 0.3, 1000)
    assert c.heads.bins == "symexp" and c.heads.num_bins == 255 and c.critic.slow_rate == 0.02
    assert c.actor.entropy == 3e-4 and c.batch_size == 16 and c.batch_length == 64 and c.train_ratio == 256
    # V2 defaults (issue 9), each with its switch
    assert c.actor.unimix == 0.0 and c.imag.contdisc is True and c.loss.repval == 0.3 and c.critic.repval_grad
    assert c.eval_policy == "sample" and c.init == "v2" and c.decoder.bspace == 8 and not c.decoder.vector_half
    assert c.precision == "auto"


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
    c = make_config("size1m", rssm={"deter": 64}, norm="layer", loss={"rep": 0.3}, encoder={"cnn_mults": [1, 2, 3, 4]})
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


def test_every_numeric_and_choice_field_declares_its_check():
    """Validation lives beside each field: a new int/float field without a check fails here."""
    unchecked = [path for path, f, value in iter_leaves(Config())
                 if isinstance(value, (int, float)) and not isinstance(value, bool) and f.metadata.get("check") is None]
    assert not unchecked, unchecked


NUMERIC = [path for path, _, value in iter_leaves(Config()) if isinstance(value, (int, float))
           and not isinstance(value, bool)]


@pytest.mark.parametrize("path", NUMERIC)
def test_every_numeric_field_rejects_out_of_range_and_non_finite(path):
    c = make_config("size1m")
    like = get_path(c, path)
    bad = [-1e30] if isinstance(like, int) else [float("nan"), float("inf"), -1e30]
    for value in bad:
        c2 = make_config("size1m")
        obj, name = c2, path
        if "." in path:
            section, name = path.split(".")
            obj = getattr(c2, section)
        setattr(obj, name, int(value) if isinstance(like, int) else value)
        with pytest.raises(ValueError, match="^" + path.replace(".", r"\.") + ":"):
            c2.validate()


def test_one_converter_for_cli_text_and_json_values():
    c = Config()
    for text in ("1.5", "abc", "nan", "1e400"):
        with pytest.raises(ValueError, match="steps"):
            set_path(c, "steps", text)
    set_path(c, "steps", "1e3")
    assert c.steps == 1000 and isinstance(c.steps, int)
    set_path(c, "steps", 2000.0)  # a JSON number that is integral
    assert c.steps == 2000
    with pytest.raises(ValueError, match="steps"):
        set_path(c, "steps", 2.5)
    with pytest.raises(ValueError, match="replay_online"):
        set_path(c, "replay_online", 1)  # JSON 1 is not a bool
    with pytest.raises(ValueError, match="env"):
        set_path(c, "env", 3)
    assert parse_value("2, 3,4,4", (2, 3, 4, 4), "x") == (2, 3, 4, 4)
    assert parse_value([1, 2, 3, 4], (2, 3, 4, 4), "x") == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="x"):
        parse_value("1,a", (2, 3), "x")


def test_configs_saved_by_earlier_versions_still_load():
    old = config_to_dict(make_config("size1m"))
    loss = old["loss"]
    for k in ("rec", "rew", "con"):
        del loss[k]
    loss["pred"] = 0.5
    old["repo"] = {"epsilon": 3.0}
    c = config_from_dict(old)
    assert (c.loss.rec, c.loss.rew, c.loss.con) == (0.5, 0.5, 0.5)
    assert c.repo == type(c.repo)()  # the earlier design's section is dropped, the defaults take its place


def test_relations_between_fields():
    with pytest.raises(ValueError, match="replay_capacity"):
        make_config(batch_size=4, batch_length=8, num_envs=16, replay_capacity=143)  # 16 streams need 16*(8+1)
    make_config(batch_size=4, batch_length=8, num_envs=16, replay_capacity=144)
    with pytest.raises(ValueError, match="replay_capacity"):
        make_config(batch_size=4, batch_length=8, num_envs=16, replay_capacity=127, replay_context=0)
    make_config(batch_size=4, batch_length=8, num_envs=16, replay_capacity=128, replay_context=0)
    with pytest.raises(ValueError, match="imag.retnorm_low"):
        make_config(imag={"retnorm_low": 60.0, "retnorm_high": 50.0})
    with pytest.raises(ValueError, match="actor.max_std"):
        make_config(actor={"min_std": 1.0, "max_std": 0.5})
