"""Typed configs: loading, dotted overrides, validation messages, and `vireid config show`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vireid.cli import main
from vireid.config import Config, dump_yaml, load_config, parse_override, to_dict
from vireid.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_the_agw_recipe_values():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert (cfg.data.height, cfg.data.width) == (288, 144)
    assert (cfg.sampler.num_ids, cfg.sampler.num_instances) == (8, 4)
    assert cfg.train.milestones == [20, 50]


def test_file_then_overrides_applied_in_order(tmp_path):
    p = write(tmp_path, "data:\n  root: /a\ntrain:\n  epochs: 3\n")
    cfg = load_config(p, ["data.root=/x", "train.epochs=5", "train.lr=0.01", "augment.erasing_area=[0.1, 0.5]"])
    assert cfg.data.root == "/x"
    assert cfg.train.epochs == 5
    assert cfg.train.lr == pytest.approx(0.01)
    assert cfg.augment.erasing_area == (0.1, 0.5)
    # untouched keys keep their defaults
    assert cfg.data.dataset == "sysu_mm01"


def test_int_is_accepted_for_float_and_number_for_string(tmp_path):
    cfg = load_config(None, ["train.lr=1", "data.root=123"])
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.data.root == "123"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epoch=5",
         "unknown config key 'train.epoch'; known keys in train: amp, backbone_lr_mult, channels_last"),
        ("method.weights.wrt=-1", "config value method.weights.wrt=-1 is invalid: expected a weight >= 0"),
        ("method.weights.wrt=abc", "config value method.weights.wrt='abc' is invalid: expected a weight >= 0"),
        ("model.arch=vgg",
         "config value model.arch='vgg' is invalid: "
         "expected a registered backbone (resnet18, resnet18_half, resnet50)"),
        ("trian.epochs=5", "unknown config key 'trian'; known keys: augment, data, eval"),
        ("train.epochs=abc", "config key 'train.epochs' expects an integer, got 'abc' (str)"),
        ("train.epochs=2.5", "config key 'train.epochs' expects an integer, got 2.5 (float)"),
        ("train.lr=fast", "config key 'train.lr' expects a number, got 'fast' (str)"),
        ("data.dataset=sysu",
         "config value data.dataset='sysu' is invalid: expected a registered dataset (llcm, market1501"),
        ("augment.erasing_area=[0.1]", "config key 'augment.erasing_area' expects 2 values, got 1"),
        ("train.milestones=5", "config key 'train.milestones' expects a list, got 5 (int)"),
        ("data.trial=11", "config value data.trial=11 is invalid: expected an integer in 1..10"),
        ("augment.flip=1.5", "config value augment.flip=1.5 is invalid: expected a probability in [0, 1]"),
        ("train.milestones=[50, 20]", "config value train.milestones=[50, 20] is invalid: expected ascending epochs"),
        ("train.epochs", "override 'train.epochs' must look like key.subkey=value"),
        ("train..epochs=3", "has an empty key"),
        ("seed.value=3", "config key 'seed' is a value, not a section; give it an integer"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_allowed(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)


def test_exponent_notation_is_a_number_as_users_write_it(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-3 as a string; a float key takes it as 0.001, in a YAML file and in --set."""
    cfg = load_config(None, ["train.lr=1e-3", "train.weight_decay=5E-4", "augment.flip=-0e0"])
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.augment.flip) == (0.001, 0.0005, 0.0)
    (tmp_path / "r.yaml").write_text("train: {lr: 3.5e-4}\n")
    assert load_config(tmp_path / "r.yaml").train.lr == 0.00035
    with pytest.raises(ConfigError, match="expects an integer, got '1e3'"):
        load_config(None, ["train.epochs=1e3"])  # integers stay integers


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = write(tmp_path, "data:\n  rot: /x\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml: unknown config key 'data.rot'; known keys in data: cache_dir"):
        load_config(p)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = write(tmp_path, "data:\n  root: /x\n  height: [1, 2\ntrain: {}\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml:\d+: invalid YAML"):
        load_config(p)


def test_top_level_must_be_a_mapping(tmp_path):
    p = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(p)


def test_section_given_as_scalar(tmp_path):
    p = write(tmp_path, "data: 5\n")
    with pytest.raises(ConfigError, match="'data' must be a mapping, got 5"):
        load_config(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("does/not/exist.yaml")


def test_empty_file_gives_defaults(tmp_path):
    assert to_dict(load_config(write(tmp_path, ""))) == to_dict(Config())


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["data.root=/r", "augment.erasing_area=[0.2, 0.8]", "data.cache_dir=/c"])
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)
    assert again.augment.erasing_area == (0.2, 0.8)


def test_optional_accepts_null_and_string():
    assert load_config(None, ["data.cache_dir=null"]).data.cache_dir is None
    assert load_config(None, ["data.cache_dir=/tmp/c"]).data.cache_dir == "/tmp/c"


def test_parse_override_parses_yaml_values():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=") == (["a"], "")


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.data.height > 0


def test_cli_config_show_prints_resolved_yaml(capsys):
    rc = main(["config", "show", str(REPO / "configs/agw/regdb.yaml"), "--set", "data.trial=3", "train.epochs=2"])
    assert rc == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["data"]["dataset"] == "regdb"
    assert shown["data"]["trial"] == 3
    assert shown["train"]["epochs"] == 2


def test_cli_config_show_json(capsys):
    assert main(["config", "show", "--json", "--set", "seed=7"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 7


def test_cli_config_error_is_one_line_without_traceback(capsys):
    rc = main(["config", "show", "--set", "train.epochs=abc"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines() == [
        "vireid: error: --set train.epochs=abc: config key 'train.epochs' expects an integer, got 'abc' (str)"
    ]


def test_configs_demo_yaml_is_the_recipe_vireid_demo_runs(tmp_path):
    from vireid.demo import DEMO_RECIPE, demo_config

    assert yaml.safe_load((REPO / "configs/demo.yaml").read_text()) == DEMO_RECIPE
    shipped = to_dict(load_config(REPO / "configs/demo.yaml"))
    ran = to_dict(demo_config(tmp_path))
    for moved in (("data", "root"), ("data", "cache_dir"), ("output_dir",)):  # demo_config places these under --out
        node_a, node_b = shipped, ran
        for key in moved[:-1]:
            node_a, node_b = node_a[key], node_b[key]
        node_a.pop(moved[-1]), node_b.pop(moved[-1])
    assert shipped == ran
