"""Config loading: inheritance, overrides, and the messages a user sees for each mistake."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from radial_jax.config import Config, ConfigError, describe_keys, from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_base_inheritance_and_overrides(tmp_path):
    write(tmp_path, "parent.yaml", "model:\n  d_model: 64\n  n_layers: 3\ntrain:\n  steps: 50\n")
    child = write(tmp_path, "child.yaml", "base: parent.yaml\nmodel:\n  n_layers: 5\n")
    cfg = load_config(child, ["train.steps=200", "model.dtype=bfloat16", "run.dir=/tmp/r1",
                              "train.warmup_steps=10"])
    assert cfg.model.d_model == 64          # from the parent
    assert cfg.model.n_layers == 5          # child wins over parent
    assert cfg.train.steps == 200           # command line wins over files
    assert cfg.model.dtype == "bfloat16"
    assert cfg.run.dir == "/tmp/r1"
    assert cfg.model.n_heads == Config().model.n_heads  # schema default


def test_resolved_config_round_trips_through_yaml():
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.steps=77"])
    again = from_dict(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_config_is_read_only():
    cfg = load_config(CONFIGS / "tiny.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.d_model = 3


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    p = write(tmp_path, "bad.yaml", "model:\n  d_modle: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "model.d_modle" in msg and "did you mean 'model.d_model'" in msg


def test_unknown_key_in_base_file_names_the_base_file(tmp_path):
    parent = write(tmp_path, "parent.yaml", "train:\n  stepz: 3\n")
    child = write(tmp_path, "child.yaml", "base: parent.yaml\nmodel:\n  d_model: 64\n")
    with pytest.raises(ConfigError, match=re.escape(str(parent)) + ".*train.stepz.*train.steps"):
        load_config(child)


def test_unknown_section_and_override_key():
    with pytest.raises(ConfigError, match="unknown section 'modle'.*did you mean 'model'"):
        load_config(None, ["modle.d_model=3"])
    with pytest.raises(ConfigError, match="command line: unknown key 'train.lr_peak'.*'train.lr'"):
        load_config(None, ["train.lr_peak=3"])


@pytest.mark.parametrize("override, pieces", [
    ("model.d_model=abc", ["model.d_model='abc'", "must be an integer"]),
    ("model.n_layers=2.5", ["model.n_layers=2.5", "must be an integer"]),
    ("train.lr=-1", ["train.lr=-1", "out of range", "> 0"]),
    ("model.dtype=float16", ["model.dtype='float16'", "'float32', 'bfloat16'"]),
    ("model.tie_embeddings=maybe", ["model.tie_embeddings='maybe'", "true or false"]),
    ("data.valid_percent=80", ["data.valid_percent=80", "<= 50"]),
    ("train.steps=0", ["train.steps=0", ">= 1"]),
])
def test_wrong_type_or_range_names_key_value_and_allowed(override, pieces):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override, "train.warmup_steps=0"])
    for piece in pieces:
        assert piece in str(e.value), (piece, str(e.value))


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="n_kv_heads=3 must divide model.n_heads=4"):
        load_config(None, ["model.n_kv_heads=3"])
    with pytest.raises(ConfigError, match="vocab_size=100.*258"):
        load_config(None, ["model.vocab_size=100"])
    with pytest.raises(ConfigError, match="routing.top_k=5 exceeds model.pool_size=4"):
        load_config(None, ["model.kind=radial", "routing.top_k=5"])


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope.yaml"))):
        load_config(tmp_path / "nope.yaml")
    child = write(tmp_path, "child.yaml", "base: gone.yaml\n")
    with pytest.raises(ConfigError, match="base config not found: .*gone.yaml"):
        load_config(child)


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["train.steps"])


def test_base_yaml_documents_every_key():
    text = (CONFIGS / "base.yaml").read_text()
    for key in describe_keys():
        section, name = key.split(".")
        assert re.search(rf"^  {name}: .*# \S", text, re.M), f"base.yaml lacks a commented {key}"
    # and base.yaml itself is exactly the schema's defaults
    assert load_config(CONFIGS / "base.yaml") == Config()


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if "sweeps" not in p.parts),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)  # sweep files: tests/test_sweep.py::test_shipped_sweeps_validate
