"""Hugging Face import: tiny random GPT-2, OPT and Llama-family models built locally with transformers
(no download) give the same logits in radial_jax; the directory's tokenizer.json is used; eval and
profile take such a directory."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from radial_jax.cli import main
from radial_jax.config import ConfigError
from radial_jax.data.tokenizer import HFTokenizer, get_tokenizer
from radial_jax.generate.sampling import Generator, Sampling
from radial_jax.io.hf.load import read_hf
from radial_jax.io.load import load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 300
TINY = {
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_positions=48, n_embd=32, n_layer=2, n_head=4),
    "opt": lambda: transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                          num_attention_heads=4, max_position_embeddings=48,
                                          word_embed_proj_dim=32),
    "llama": lambda: transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, rope_theta=500.0),
    "llama_biases_tied": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=12, attention_bias=True, mlp_bias=True, tie_word_embeddings=True),
    "qwen2": lambda: transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2),
    "mistral": lambda: transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2, sliding_window=64),
}


def make_hf(kind: str, path, seed: int = 0):
    """A tiny transformers model with every parameter (biases and norms too) randomised, saved to path."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(TINY[kind]()).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0  # norm scales around 1
            p.copy_(base + 0.2 * torch.randn_like(p))
    model.save_pretrained(str(path))
    return model


def ours_logits(graphdef, params, tokens, pos=None, seg=None):
    model = nnx.merge(graphdef, params)
    b, s = tokens.shape
    pos = np.broadcast_to(np.arange(s), (b, s)) if pos is None else pos
    seg = np.ones((b, s), np.int32) if seg is None else seg
    return np.asarray(model(jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg))[0])


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@pytest.mark.parametrize("kind", sorted(TINY))
def test_imported_model_gives_the_same_logits(tmp_path, kind):
    hf = make_hf(kind, tmp_path)
    cfg, graphdef, params = read_hf(tmp_path)
    assert cfg.model.kind == "dense" and cfg.model.vocab_size == VOCAB and cfg.data.tokenizer == "bytes"
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 24))
    np.testing.assert_allclose(ours_logits(graphdef, params, tokens), hf_logits(hf, tokens),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "opt"])
def test_learned_positions_restart_per_packed_document(tmp_path, kind):
    hf = make_hf(kind, tmp_path)
    _, graphdef, params = read_hf(tmp_path)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, VOCAB, 13), rng.integers(0, VOCAB, 9)
    row = np.concatenate([a, b])[None]
    pos = np.concatenate([np.arange(13), np.arange(9)])[None]
    seg = np.concatenate([np.ones(13, np.int32), np.full(9, 2, np.int32)])[None]
    got = ours_logits(graphdef, params, row, pos, seg)[0]
    np.testing.assert_allclose(got[:13], hf_logits(hf, a[None])[0], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got[13:], hf_logits(hf, b[None])[0], atol=1e-4, rtol=1e-4)


def test_unsupported_models_and_missing_tokenizers_are_clear_errors(tmp_path):
    make_hf("llama", tmp_path / "ok")
    doc = json.loads((tmp_path / "ok" / "config.json").read_text())
    doc["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0}
    (tmp_path / "ok" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="RoPE scaling 'llama3' is not supported"):
        read_hf(tmp_path / "ok")
    doc["model_type"] = "bloom"
    (tmp_path / "ok" / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="model_type 'bloom' is not supported; supported: gpt2, llama"):
        read_hf(tmp_path / "ok")

    small = transformers.LlamaConfig(vocab_size=99, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2)
    transformers.LlamaForCausalLM(small).save_pretrained(str(tmp_path / "small"))
    with pytest.raises(ConfigError, match=r"no tokenizer.json, and its vocabulary \(99 ids\) is smaller"):
        read_hf(tmp_path / "small")


def write_tokenizer(folder, texts: list[str]) -> HFTokenizer:
    """A byte-level BPE tokenizer.json trained here on `texts`, with <s> and </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.save(str(folder / "tokenizer.json"))
    return HFTokenizer(folder / "tokenizer.json")


def test_directory_tokenizer_is_used_by_eval_and_profile(tmp_path, capsys):
    texts = [f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(60)]
    for i, text in enumerate(texts):
        (tmp_path / f"doc{i}.txt").write_text(text)
    model_dir = tmp_path / "gpt2"
    hf = make_hf("gpt2", model_dir)
    tok = write_tokenizer(model_dir, texts)
    assert tok.vocab_size <= VOCAB
    doc = json.loads((model_dir / "config.json").read_text())
    doc.update(bos_token_id=0, eos_token_id=1)  # <s>, </s> of this tokenizer
    (model_dir / "config.json").write_text(json.dumps(doc))

    tok = get_tokenizer(str(model_dir / "tokenizer.json"))
    ids = tok.encode("def f(x):")
    assert ids[0] == 0 and ids[-1] == 1 and tok.decode(ids) == "def f(x):"
    assert tok.token_bytes()[0] == 0 and tok.token_bytes().sum() > tok.vocab_size

    data = [f"data.train_files=['{tmp_path}/doc*.txt']", f"data.valid_files=['{tmp_path}/doc1*.txt']",
            "data.source=text", "data.seq_len=24", "data.batch_size=2"]
    loaded = load_model(model_dir, data)
    assert loaded.source == "hf" and loaded.cfg.data.tokenizer.endswith("tokenizer.json")
    assert main(["eval", "--checkpoint", str(model_dir), "--batches", "2", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert np.isfinite(report["eval/loss"]) and report["eval/bits_per_byte"] > 0

    # generate decodes through the directory's tokenizer (not byte by byte)
    assert main(["generate", "--checkpoint", str(model_dir), "--prompt", "def f(x):",
                 "--max-tokens", "6", "--seed", "1", *data]) == 0
    printed = capsys.readouterr().out
    continuation = printed[len("def f(x):"):].rstrip("\n")
    assert printed.startswith("def f(x):")
    m = load_model(model_dir, data)
    want = Generator(m.cfg, m.graphdef, m.params).generate(
        [tok.encode("def f(x):", bos=True, eos=False).tolist()], max_tokens=6,
        sampling=Sampling(0.8, 0, 1.0), seed=1, eos_id=tok.eos_id)
    assert continuation == tok.decode(want.tokens[0])

    out = tmp_path / "prof"
    assert main(["profile", "--checkpoint", str(model_dir), "--batches", "2", "--out", str(out),
                 "--oracle", "0,0.5", *data]) == 0
    prof = json.loads((out / "profile.json").read_text())
    assert prof["source"] == "hf" and len(prof["blocks"]) == 4
    assert prof["eval"]["loss"] == pytest.approx(report["eval/loss"], rel=1e-5)
    assert prof["oracle"]["rows"][0]["loss"] == prof["eval"]["loss"]
    # the loss transformers computes on the same batches
    from radial_jax.data.pipeline import make_eval_batches

    nll = count = 0.0
    for batch in make_eval_batches(loaded.cfg.data, loaded.tokenizer, 2):
        for r in range(batch["inputs"].shape[0]):
            seg, mask = np.asarray(batch["segment_ids"][r]), np.asarray(batch["loss_mask"][r])
            for s in np.unique(seg[seg > 0]):
                sel = seg == s
                logits = hf_logits(hf, np.asarray(batch["inputs"][r])[sel][None])[0]
                logp = torch.log_softmax(torch.tensor(logits), -1).numpy()
                tgt = np.asarray(batch["targets"][r])[sel]
                nll -= (logp[np.arange(len(tgt)), tgt] * mask[sel]).sum()
                count += mask[sel].sum()
    assert prof["eval"]["loss"] == pytest.approx(nll / count, rel=1e-4)


def test_imported_model_exports_to_both_layouts(tmp_path, capsys):
    hf = make_hf("opt", tmp_path / "hf")
    write_tokenizer(tmp_path / "hf", ["one two three four five six seven"] * 3)
    tokens = np.random.default_rng(3).integers(0, VOCAB, (2, 16))
    want = hf_logits(hf, tokens)
    assert main(["export", "--checkpoint", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "ours"), "--out", str(tmp_path / "back"),
                 "--format", "hf"]) == 0
    capsys.readouterr()
    ours = load_model(tmp_path / "ours")
    assert ours.source == "export" and ours.cfg.data.tokenizer == str(tmp_path / "ours" / "tokenizer.json")
    np.testing.assert_allclose(ours_logits(ours.graphdef, ours.params, tokens), want, atol=1e-4, rtol=1e-4)
    # our layout remembers the architecture, so --format hf writes OPT again (GPT-2 would fit too)
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back"), dtype=torch.float32)
    assert type(back).__name__ == "OPTForCausalLM"
    np.testing.assert_allclose(hf_logits(back.eval(), tokens), want, atol=1e-4, rtol=1e-4)
    assert (tmp_path / "back" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "back" / "config.json").read_text())["bos_token_id"] == 0


@pytest.mark.parametrize(("kind", "cls"), [
    ("gpt2", "GPT2LMHeadModel"), ("opt", "OPTForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
    ("llama_biases_tied", "LlamaForCausalLM")])
def test_imported_model_exports_back_to_its_own_architecture(tmp_path, kind, cls):
    hf = make_hf(kind, tmp_path / "hf")
    assert main(["export", "--checkpoint", str(tmp_path / "hf"), "--out", str(tmp_path / "back"),
                 "--format", "hf"]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back"), dtype=torch.float32)
    assert type(back).__name__ == cls
    tokens = np.random.default_rng(4).integers(0, VOCAB, (2, 24))
    np.testing.assert_allclose(hf_logits(back.eval(), tokens), hf_logits(hf, tokens), atol=1e-4, rtol=1e-4)
