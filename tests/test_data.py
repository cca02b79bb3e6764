"""The data package: sources and their errors, packing soundness, resumable iterators, sharding,
TFDS sources, and the builtin stdlib corpus."""

from __future__ import annotations

import dataclasses
import json
import string
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from radial_jax.config import DataConfig
from radial_jax.data import corpus, pipeline
from radial_jax.data.pipeline import (
    describe,
    make_eval_batches,
    make_iterator,
    to_model_batch,
)
from radial_jax.data.sources import DataError, make_source
from radial_jax.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
BOS, EOS = TOK.bos_id, TOK.eos_id
LETTERS = string.ascii_letters  # document i is made of LETTERS[i] only, so crossings are visible


def letter_docs(tmp_path: Path, lengths: list[int]) -> list[str]:
    """One .txt file per document; document i is LETTERS[i] repeated lengths[i] times."""
    texts = [LETTERS[i] * n for i, n in enumerate(lengths)]
    for i, text in enumerate(texts):
        (tmp_path / f"doc{i:02d}.txt").write_text(text)
    return texts


def text_cfg(tmp_path: Path, **kw) -> DataConfig:
    base = dict(source="text", train_files=[str(tmp_path / "*.txt")], seq_len=16, batch_size=4,
                shuffle_rows=0)  # document order visible; the row window has its own test
    return DataConfig(**{**base, **kw})


def take(it, n: int) -> list[dict]:
    return [next(it) for _ in range(n)]


def doc_starts(batches: list[dict]) -> list[str]:
    """Letters of the documents in stream order (the token after each BOS; rows hold S + 1 tokens,
    the last only as a target, so inputs plus the last target rebuild the stream)."""
    stream = [t for b in batches for inp, tgt in zip(b["inputs"], b["targets"], strict=True)
              for t in (*inp, tgt[-1])]
    return [chr(stream[i + 1]) for i in range(len(stream) - 1) if stream[i] == BOS]


# --------------------------------------------------------------------------- text sources


def test_text_source_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first doc")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "line one", "id": 1}) + "\n\n"
                                      + json.dumps({"text": ""}) + "\n"
                                      + json.dumps({"text": "line four é"}) + "\n")
    (tmp_path / "v.md").write_text("held out")
    cfg = DataConfig(source="text", train_files=[str(tmp_path / "*.txt"), str(tmp_path / "*.jsonl")],
                     valid_files=[str(tmp_path / "v.md")])
    train = make_source(cfg, "train")
    assert sorted(train[i] for i in range(len(train))) == ["first doc", "line four é", "line one"]
    valid = make_source(cfg, "valid")
    assert [valid[i] for i in range(len(valid))] == ["held out"]


def test_text_hold_out_is_stable_disjoint_and_never_empty(tmp_path):
    letter_docs(tmp_path, [5] * 40)
    cfg = text_cfg(tmp_path, valid_percent=10.0)
    train, valid = make_source(cfg, "train"), make_source(cfg, "valid")
    t, v = set(train.keys), set(valid.keys)
    assert t.isdisjoint(v) and len(t | v) == 40 and len(v) >= 1
    assert set(make_source(cfg, "valid").keys) == v
    # Membership depends on the path only: adding documents moves none of the old ones.
    (tmp_path / "doc99.txt").write_text("new")
    assert v <= set(make_source(cfg, "valid").keys) | {"doc99.txt"}
    # Tiny corpora still get one document on each side.
    assert corpus.held_out_indices(["a", "b"], 0.01) and len(corpus.held_out_indices(["a", "b"], 50)) == 1


# --------------------------------------------------------------------------- bad data


def _bad(tmp_path: Path, case: str) -> tuple[DataConfig, str]:
    """A config that must fail, and the text its DataError must contain."""
    cfg = lambda *files: DataConfig(source="text", train_files=[str(tmp_path / f) for f in files])
    if case == "glob_matches_nothing":
        return cfg("nothing/*.txt"), "no file matches"
    if case == "missing_file":
        return cfg("gone.txt"), "gone.txt"
    if case == "folder":
        (tmp_path / "dir").mkdir()
        return cfg("dir"), "is a folder"
    if case == "all_empty":
        (tmp_path / "e1.txt").write_text("")
        (tmp_path / "e2.jsonl").write_text('{"text": ""}\n')
        return cfg("e1.txt", "e2.jsonl"), "hold no documents"
    if case == "jsonl_not_json":
        (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
        return cfg("x.jsonl"), "x.jsonl:2: not a JSON object"
    if case == "jsonl_no_text":
        (tmp_path / "x.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{"body": "no"}\n')
        return cfg("x.jsonl"), "x.jsonl:3: no \"text\" field (keys: body)"
    if case == "jsonl_text_not_str":
        (tmp_path / "x.jsonl").write_text('{"text": 3}\n')
        return cfg("x.jsonl"), "x.jsonl:1: \"text\" is a int"
    if case == "jsonl_not_utf8":
        (tmp_path / "x.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff\xfe\xfa"}\n')
        return cfg("x.jsonl"), "x.jsonl:2: not valid UTF-8"
    if case == "txt_all_undecodable":
        (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa ok")
        return cfg("bad.txt"), "not UTF-8"
    if case == "single_document":
        (tmp_path / "one.txt").write_text("only one")
        return cfg("one.txt"), "set data.valid_files"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["glob_matches_nothing", "missing_file", "folder", "all_empty",
                                  "jsonl_not_json", "jsonl_no_text", "jsonl_text_not_str",
                                  "jsonl_not_utf8", "txt_all_undecodable", "single_document"])
def test_bad_text_data_gives_a_clear_error(tmp_path, case):
    cfg, expected = _bad(tmp_path, case)
    with pytest.raises(DataError) as err:
        make_source(cfg, "train")
    assert expected in str(err.value)
    if case not in ("single_document",):
        assert str(tmp_path) in str(err.value) or "data.train_files" in str(err.value)


def test_undecodable_txt_is_skipped_with_one_counted_warning(tmp_path, capsys):
    letter_docs(tmp_path, [4, 4, 4])
    (tmp_path / "bad1.txt").write_bytes(b"\xff\xfe")
    (tmp_path / "bad2.txt").write_bytes(b"ok \xc3")
    src = make_source(text_cfg(tmp_path, valid_files=[str(tmp_path / "doc00.txt")]), "train")
    assert len(src) == 3
    out = capsys.readouterr().out
    assert out.count("warning") == 1 and "skipped 2 of 5 files that are not valid UTF-8" in out


def test_batch_size_must_divide_across_processes(tmp_path):
    letter_docs(tmp_path, [4, 4, 4])
    with pytest.raises(DataError, match="not divisible"):
        make_iterator(text_cfg(tmp_path, batch_size=5), "train", tokenizer=TOK, seed=0, process_count=2)


# --------------------------------------------------------------------------- packing


def test_to_model_batch_masks_boundaries_and_padding():
    # One row of 9 tokens (seq_len 8): doc 1 = 3 tokens, doc 2 = 4 tokens, then 2 padding.
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0]], np.int32)
    packed = {"tokens": np.arange(9, dtype=np.int32)[None], "tokens_segment_ids": seg,
              "tokens_positions": np.array([[0, 1, 2, 0, 1, 2, 3, 0, 0]], np.int32)}
    b = to_model_batch(packed)
    assert b["inputs"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert b["targets"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert b["loss_mask"].tolist() == [[1, 1, 0, 1, 1, 1, 0, 0]]
    assert b["segment_ids"].dtype == np.int32 and b["positions"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]


def test_packing_is_sound_and_loses_nothing(tmp_path):
    lengths = [3, 40, 7, 1, 16, 0, 25, 2, 60, 9]  # shorter, equal to and longer than a row; one empty
    texts = letter_docs(tmp_path, lengths)
    cfg = text_cfg(tmp_path, seq_len=16, batch_size=3, valid_files=[str(tmp_path / "*.txt")])
    batches = make_eval_batches(cfg, TOK, 12)
    S = cfg.seq_len
    stream = []
    for b in batches:
        assert all(v.shape == (3, S) for v in b.values())
        assert {k: v.dtype for k, v in b.items()} == {"inputs": np.int32, "targets": np.int32,
                                                      "positions": np.int32, "segment_ids": np.int32,
                                                      "loss_mask": np.float32}
        for r in range(3):
            inp, tgt, seg, pos, mask = (b[k][r] for k in ("inputs", "targets", "segment_ids",
                                                           "positions", "loss_mask"))
            assert (seg >= 1).all()  # an endless stream never pads
            np.testing.assert_array_equal(inp[1:], tgt[:-1])
            # The mask is 0 exactly at the last input of each piece that ends inside the row (the
            # next piece is a new document, so its first token, the target there, is BOS).
            np.testing.assert_array_equal(mask[:-1], (seg[1:] == seg[:-1]).astype(np.float32))
            np.testing.assert_array_equal(mask, (tgt != BOS).astype(np.float32))
            for i in np.nonzero(mask)[0]:  # a counted target continues the same document
                assert inp[i] != EOS and tgt[i] != BOS
                if inp[i] < 256 and tgt[i] < 256:
                    assert inp[i] == tgt[i]  # same letter = same document
            for s in np.unique(seg):  # positions count 0, 1, ... inside every piece
                np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
            stream += [*inp, tgt[-1]]
    # Rows concatenated give back the documents, in the split's fixed shuffled order, with BOS/EOS.
    src = make_source(cfg, "valid")
    assert sorted(src[i] for i in range(len(src))) == sorted(t for t in texts if t)
    order = grain.MapDataset.source(src).shuffle(seed=pipeline._VALID_SEED).repeat(None)
    docs = [TOK.encode(order[i]) for i in range(4 * len(texts)) if order[i]]
    np.testing.assert_array_equal(np.array(stream), np.concatenate(docs)[:len(stream)])


def test_train_order_is_shuffled_and_reshuffled_every_epoch(tmp_path):
    letter_docs(tmp_path, [3] * 20)
    cfg = text_cfg(tmp_path, seq_len=32, batch_size=2, valid_files=[str(tmp_path / "doc00.txt")])
    starts = doc_starts(take(make_iterator(cfg, "train", tokenizer=TOK, seed=1), 12))
    first, second = starts[:20], starts[20:40]
    assert sorted(first) == sorted(second) == sorted(LETTERS[:20])
    assert first != second and first != sorted(first)
    again = doc_starts(take(make_iterator(cfg, "train", tokenizer=TOK, seed=1), 12))
    other = doc_starts(take(make_iterator(cfg, "train", tokenizer=TOK, seed=2), 12))
    assert again == starts and other != starts


def test_row_shuffle_window_mixes_documents_and_resumes_exactly(tmp_path):
    letter_docs(tmp_path, [200] * 12)  # long documents: each fills many consecutive rows
    plain = text_cfg(tmp_path, seq_len=16, batch_size=4, valid_files=[str(tmp_path / "doc00.txt")])
    mixed = text_cfg(tmp_path, seq_len=16, batch_size=4, valid_files=[str(tmp_path / "doc00.txt")],
                     shuffle_rows=64)

    def docs_per_batch(cfg):
        batches = take(make_iterator(cfg, "train", tokenizer=TOK, seed=3), 10)
        return np.mean([len(set(b["inputs"][b["inputs"] < 256].tolist())) for b in batches])

    assert docs_per_batch(mixed) > 1.5 * docs_per_batch(plain)
    _assert_resumes_exactly(mixed, after=5, then=6)


def _assert_resumes_exactly(cfg: DataConfig, *, after: int, then: int) -> None:
    """A new iterator set to the state after `after` batches yields the same next `then` batches."""
    it = make_iterator(cfg, "train", tokenizer=TOK, seed=3)
    take(it, after)
    state = it.get_state()
    expected = take(it, then)
    resumed = make_iterator(cfg, "train", tokenizer=TOK, seed=3)
    resumed.set_state(state)
    _assert_same(take(resumed, then), expected)


def test_empty_documents_are_skipped(monkeypatch):
    import radial_jax.data.pipeline as pipeline

    monkeypatch.setattr(pipeline, "make_source", lambda cfg, split: ["ab", "", "cd", ""])
    b = next(make_iterator(DataConfig(seq_len=7, batch_size=1), "valid", tokenizer=TOK, seed=0))
    row = b["inputs"].tolist()[0]
    assert row[:4] in ([BOS, ord("a"), ord("b"), EOS], [BOS, ord("c"), ord("d"), EOS])
    assert row[4] == BOS and len(row) == 7  # the empty documents left no BOS/EOS pair behind


def test_eval_batches_are_fixed_and_fill_from_a_tiny_split(tmp_path):
    letter_docs(tmp_path, [5, 6, 7])
    cfg = text_cfg(tmp_path, seq_len=32, batch_size=4, valid_percent=30.0)
    a, b = make_eval_batches(cfg, TOK, 5), make_eval_batches(cfg, TOK, 5)
    assert len(a) == 5
    for x, y in zip(a, b, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


# --------------------------------------------------------------------------- resume and sharding


def _assert_same(xs: list[dict], ys: list[dict]) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_iterator_resumes_exactly_from_its_state(tmp_path):
    letter_docs(tmp_path, [50, 7, 33, 120, 4, 18, 64, 9])
    cfg = text_cfg(tmp_path, seq_len=16, batch_size=2, valid_files=[str(tmp_path / "doc00.txt")])
    _assert_resumes_exactly(cfg, after=5, then=7)


def test_iterator_resumes_through_grain_orbax_handler(tmp_path):
    letter_docs(tmp_path, [50, 7, 33, 120, 4, 18, 64, 9])
    cfg = text_cfg(tmp_path, seq_len=16, batch_size=2, valid_files=[str(tmp_path / "doc00.txt")])
    it = make_iterator(cfg, "train", tokenizer=TOK, seed=3)
    take(it, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mgr:
        mgr.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mgr.wait_until_finished()
        expected = take(it, 6)
        resumed = make_iterator(cfg, "train", tokenizer=TOK, seed=3)
        mgr.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
    _assert_same(take(resumed, 6), expected)


def test_processes_see_disjoint_documents_that_cover_the_corpus(tmp_path):
    letter_docs(tmp_path, [3] * 20)
    cfg = text_cfg(tmp_path, seq_len=32, batch_size=4, valid_files=[str(tmp_path / "doc00.txt")])
    seen = []
    for p in range(2):
        batches = take(make_iterator(cfg, "train", tokenizer=TOK, seed=5, process_index=p,
                                     process_count=2), 4)
        assert batches[0]["inputs"].shape == (2, 32)  # the global batch of 4 split in two
        seen.append(doc_starts(batches)[:10])  # the first epoch: 20 documents / 2 processes
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(LETTERS[:20])


# --------------------------------------------------------------------------- tfds


class TinyDocs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS dataset prepared by a test, read back by name through `data.source=tfds`."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"body": tfds.features.Text(), "n": tfds.features.Scalar(dtype=np.int32)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(6), "validation": self._generate_examples(2)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"body": f"document {i} ü", "n": i}


def tfds_cfg(data_dir: Path, **kw) -> DataConfig:
    return DataConfig(**{**dict(source="tfds", tfds_name="tiny_docs", tfds_data_dir=str(data_dir),
                                tfds_text_key="body", seq_len=16, batch_size=2), **kw})


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    TinyDocs(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    train = make_source(tfds_cfg(tmp_path), "train")
    assert sorted(train[i] for i in range(len(train))) == [f"document {i} ü" for i in range(6)]
    assert len(make_source(tfds_cfg(tmp_path), "valid")) == 2
    batch = next(make_iterator(tfds_cfg(tmp_path), "train", tokenizer=TOK, seed=0))
    assert batch["inputs"].shape == (2, 16) and BOS in batch["inputs"]
    with pytest.raises(DataError, match="available features: body, n"):
        make_source(tfds_cfg(tmp_path, tfds_text_key="text"), "train")
    with pytest.raises(DataError, match="data.tfds_valid_split='test'"):
        make_source(tfds_cfg(tmp_path, tfds_valid_split="test"), "valid")


def test_tfds_dataset_not_prepared_says_how_to_prepare_it(tmp_path):
    with pytest.raises(DataError) as err:
        make_source(tfds_cfg(tmp_path / "empty", tfds_name="my_corpus"), "train")
    msg = str(err.value)
    assert "'my_corpus'" in msg and str(tmp_path / "empty") in msg and "tfds build my_corpus" in msg
    assert "array_record" in msg and len(msg) < 1000  # not TFDS's list of every dataset


# --------------------------------------------------------------------------- builtin corpus


def test_builtin_corpus_builds_once_and_splits_by_path_hash(tmp_path, capsys):
    builder = corpus.corpus_builder(str(tmp_path), 5.0)
    out = capsys.readouterr().out
    assert "building the builtin corpus" in out and "built the builtin corpus" in out
    info_file = Path(builder.data_dir) / "dataset_info.json"
    mtime = info_file.stat().st_mtime_ns
    assert corpus.config_name(5.0) in builder.data_dir  # the Python version names the build
    assert builder.name == corpus.NAME and builder.info.metadata["skipped_not_utf8"] is not None

    again = corpus.corpus_builder(str(tmp_path), 5.0)
    out = capsys.readouterr().out
    assert "reusing the builtin corpus" in out and "building" not in out
    assert info_file.stat().st_mtime_ns == mtime

    paths = {}
    for split in ("train", "valid"):
        records = corpus.corpus_split(again, split)
        paths[split] = [records[i]["path"].decode() for i in range(len(records))]
        assert len(paths[split]) > 0 and paths[split] == sorted(paths[split])
    assert any(p.startswith("pydoc_topics/") for p in paths["train"] + paths["valid"])
    assert not any("site-packages" in p for p in paths["train"] + paths["valid"])
    everything = sorted(paths["train"] + paths["valid"])
    held = {everything[i] for i in corpus.held_out_indices(everything, 5.0)}
    assert held == set(paths["valid"])
    assert 0.02 < len(held) / len(everything) < 0.08

    cfg = DataConfig(cache_dir=str(tmp_path), seq_len=32, batch_size=2)
    line = describe(cfg)
    assert f"{len(paths['train'])} train docs" in line and f"{len(paths['valid'])} valid docs" in line
    src = make_source(cfg, "valid")
    assert src.path(0) == paths["valid"][0] and len(src[0]) > 0
    batch = next(make_iterator(cfg, "train", tokenizer=TOK, seed=0))
    assert batch["inputs"].shape == (2, 32)


def numbered_docs(tmp_path: Path, n: int = 256) -> DataConfig:
    """`n` short documents of varied lengths in one .jsonl (many documents keep grain's shuffle of
    the order cheap), one held-out document."""
    lines = [json.dumps({"text": f"<{i}>" + "x" * (i * 7 % 40)}) for i in range(n)]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "valid.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    return DataConfig(source="text", train_files=[str(tmp_path / "train.jsonl")],
                      valid_files=[str(tmp_path / "valid.jsonl")], seq_len=16, batch_size=4,
                      shuffle_rows=4)


def _joined(iters) -> dict:
    parts = [next(it) for it in iters]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_positions_saved_by_two_processes_resume_on_one_and_on_four(tmp_path):
    """data.streams=4: the batches do not depend on the number of processes, and the positions
    two processes saved, merged (after a JSON round trip), resume 1 or 4 processes exactly: each
    stream goes on with the document tokens that follow, none read again, none skipped."""
    cfg = dataclasses.replace(numbered_docs(tmp_path), streams=4)
    whole = take(make_iterator(cfg, "train", tokenizer=TOK, seed=5), 8)
    two = [make_iterator(cfg, "train", tokenizer=TOK, seed=5, process_index=p, process_count=2)
           for p in range(2)]
    assert two[1].get_state()["streams"].keys() == {"2", "3"}  # process 1 loads streams 2 and 3
    seen = [_joined(two) for _ in range(4)]
    _assert_same(seen, whole[:4])
    position = pipeline.merge_positions(
        [(p, 2, json.loads(json.dumps(it.get_state()))) for p, it in enumerate(two)])
    assert position["stream_count"] == 4 and sorted(position["streams"]) == ["0", "1", "2", "3"]
    one = make_iterator(cfg, "train", tokenizer=TOK, seed=5)
    one.set_state(position)
    resumed = take(one, 4)
    _assert_same(resumed, whole[4:])
    four = [make_iterator(cfg, "train", tokenizer=TOK, seed=5, process_index=p, process_count=4)
            for p in range(4)]
    for it in four:
        it.set_state(position)
    _assert_same([_joined(four) for _ in range(4)], whole[4:])
    # Document ids: stream s (row s) reads documents s, s + 4, ... of the shuffled order, its rows
    # mixed in windows of 4; its 8 rows hold the first 8 * 17 tokens of those documents, each once.
    order = grain.MapDataset.source(make_source(cfg, "train")).shuffle(seed=5).repeat(None)
    for s in range(4):
        rows = [[*b["inputs"][s], b["targets"][s][-1]] for b in seen + resumed]
        texts, i = [], s
        while sum(len(t) + 2 for t in texts) < 8 * 17:
            texts.append(order[i])
            i += 4
        tokens = np.concatenate([TOK.encode(t) for t in texts])[:8 * 17]
        assert sorted(t for row in rows for t in row) == sorted(tokens)
        ids = [int(t[1:t.index(">")]) for t in texts]
        assert len(set(ids)) == len(ids) > 3  # distinct documents: no repeat in the first epoch


def test_by_default_a_run_keeps_one_stream_per_process_that_started_it(tmp_path):
    """data.streams=0: two processes deal from 2 streams; one process resumes them (also from the
    bare per-process states of the older pipeline, which are those streams); four cannot divide
    them and are told what to do."""
    cfg = numbered_docs(tmp_path)
    two = [make_iterator(cfg, "train", tokenizer=TOK, seed=5, process_index=p, process_count=2)
           for p in range(2)]
    assert [_joined(two)["inputs"].shape for _ in range(3)] == [(4, 16)] * 3
    states = [it.get_state() for it in two]
    assert [s["stream_count"] for s in states] == [2, 2]
    expected = [_joined(two) for _ in range(3)]
    for saved in ([(p, 2, s) for p, s in enumerate(states)],
                  [(p, 2, s["streams"][str(p)]) for p, s in enumerate(states)]):  # bare states
        one = make_iterator(cfg, "train", tokenizer=TOK, seed=5, streams=2)
        one.set_state(pipeline.merge_positions(saved))
        _assert_same(take(one, 3), expected)
    with pytest.raises(DataError, match=r"the 2 data streams of this run .* cannot be divided among "
                                        r"4 processes \(batch shards\): run on 1 or 2 processes"):
        make_iterator(cfg, "train", tokenizer=TOK, seed=5, process_index=0, process_count=4,
                      streams=2)
