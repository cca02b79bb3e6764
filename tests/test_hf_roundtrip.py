"""A radial model's transformers export (`radial export --format hf`) read back by radial_jax: it is a
Hugging Face directory like any other, so `load_model` (and with it eval, generate, profile) returns
the radial model it was written from, parameter for parameter, on the byte tokenizer it ran on."""

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.data.tokenizer import ByteTokenizer
from radial_jax.io.export import write_export
from radial_jax.io.load import load_model
from radial_jax.io.tensors import flat_params
from radial_jax.model.build import build_model
from tests.helpers import tiny_config

RADIAL = ("model.kind=radial", "model.pool_size=2", "model.steps=3", "model.prefix_layers=1",
          "routing.skip=learned", "router.init=random", "model.init_std=0.2")


def export_both(cfg, tmp_path):
    """A random model of `cfg` exported as transformers remote code and in our layout."""
    graphdef, params = nnx.split(build_model(cfg), nnx.Param)
    for fmt in ("hf", "safetensors"):
        write_export(cfg, params, tmp_path / fmt, fmt=fmt, tokenizer=ByteTokenizer())
    return graphdef, params


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("radial_hf")
    cfg = tiny_config(*RADIAL)
    graphdef, params = export_both(cfg, tmp)
    return cfg, graphdef, params, tmp


def test_load_model_reads_the_remote_code_directory_back(exported):
    cfg, graphdef, params, tmp = exported
    loaded = load_model(tmp / "hf")
    assert (loaded.source, loaded.arch, loaded.cfg.data.tokenizer) == ("hf", "radial", "bytes")
    # every field inference reads (n_layers is the dense model's; head_dim 0 meant d_model / n_heads)
    assert replace(loaded.cfg.model, n_layers=cfg.model.n_layers) == replace(cfg.model, head_dim=8)
    assert loaded.cfg.routing == cfg.routing and loaded.cfg.router.hidden == cfg.router.hidden
    want, got = flat_params(params), flat_params(loaded.params)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 24)).astype(np.int32)
    args = (jnp.asarray(tokens), jnp.broadcast_to(jnp.arange(24), (2, 24)), jnp.ones((2, 24), jnp.int32))
    for inference in (False, True):  # training routing (with capacity) and inference routing
        logits = jax.jit(lambda p, inference=inference: nnx.merge(graphdef, p)(*args, inference=inference)[0])
        np.testing.assert_array_equal(np.asarray(logits(loaded.params)), np.asarray(logits(params)))


def test_radial_generate_runs_on_the_directory(exported, capsys):
    # the same parameters and config as the model (test above), so the same text; here: the CLI path
    _, _, _, tmp = exported
    assert main(["generate", "--checkpoint", str(tmp / "hf"), "--prompt", "def ", "--max-tokens", "12",
                 "--temperature", "0", "--show-depth"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("def ") and "tokens in" in printed.err


def test_untied_head_and_shared_router_read_back(tmp_path):
    cfg = tiny_config(*RADIAL, "model.tie_embeddings=false", "router.per_step=false", "model.kv_skip=carry")
    _, params = export_both(cfg, tmp_path)
    loaded = load_model(tmp_path / "hf")
    assert not loaded.cfg.model.tie_embeddings and loaded.cfg.model.kv_skip == "carry"
    want = flat_params(params)
    assert {"embedder.head", "router.step_embed"} <= set(want)
    jax.tree.map(np.testing.assert_array_equal, flat_params(loaded.params), want)
