"""The builtin corpus: text every Python installation has, as a TFDS builder writing ArrayRecord.

Documents are the running interpreter's standard-library `.py` sources, its own tests included
(`stdlib/<relative path>`; `site-packages` and `dist-packages` left out, files that are not UTF-8
skipped and counted) and each `pydoc_data` help topic (`pydoc_topics/<name>`), in path order.
About 1,800 documents, 31 MB on Python 3.11; the build takes about a second.
A document goes to validation when a sha1 hash of its path falls in the held-out `valid_percent`,
so membership depends on the path alone. The stdlib differs between Python versions, so the builder
config is named for the version (`py3.11.7-valid5`). Built once into `<cache_dir>/tfds`, then reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import sys
import sysconfig
import time
from pathlib import Path
from pydoc_data.topics import topics
from typing import Literal

import tensorflow_datasets as tfds

NAME = "radial_stdlib_corpus"
SPLITS = {"train": "train", "valid": "validation"}
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_EXCLUDED_FILES = {"pydoc_data/topics.py"}  # the help topics, added one document per topic


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % 10_000


def held_out_indices(keys: list[str], valid_percent: float) -> list[int]:
    """Indices of the keys (relative paths) held out for validation: those whose sha1 bucket falls
    in the lowest `valid_percent` percent, so membership depends on the key alone. With two or more
    keys, at least one is held out and at least one kept (lowest / highest bucket)."""
    buckets = [_bucket(k) for k in keys]
    valid = [i for i, b in enumerate(buckets) if b < round(valid_percent * 100)]
    if len(keys) >= 2 and not valid:
        valid = [min(range(len(keys)), key=buckets.__getitem__)]
    elif len(keys) >= 2 and len(valid) == len(keys):
        valid.remove(max(range(len(keys)), key=buckets.__getitem__))
    return valid


def config_name(valid_percent: float) -> str:
    """`py3.11.7-valid5`: the interpreter version (the stdlib differs) and the held-out percent."""
    v = sys.version_info
    return f"py{v.major}.{v.minor}.{v.micro}-valid{valid_percent:g}"


def _stdlib_documents() -> tuple[list[tuple[str, str]], list[str]]:
    """(relative path, text) of the documents in path order, and the files skipped as not UTF-8."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, skipped = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.intersection(rel.parts[:-1]) or rel.as_posix() in _EXCLUDED_FILES:
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(rel.as_posix())
            continue
        except OSError:  # a broken symlink or unreadable file: not a corpus problem
            continue
        if text.strip():
            docs.append((f"stdlib/{rel.as_posix()}", text))
    docs.extend((f"pydoc_topics/{name}", text) for name, text in topics.items() if text.strip())
    return sorted(docs), skipped


class RadialStdlibCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Python's own sources and help topics as `{"text", "path"}` documents."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "stdlib .py sources (tests included) + pydoc topics; sha1 path hold-out."}

    def __init__(self, *, valid_percent: float, **kwargs):
        self.valid_percent = float(valid_percent)
        config = tfds.core.BuilderConfig(name=config_name(self.valid_percent),
                                         description=f"Python {sys.version.split()[0]} stdlib, "
                                                     f"{self.valid_percent:g}% held out by path hash")
        super().__init__(config=config, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # `dataset_info_from_configs` needs TensorFlow for builders outside a TFDS package.
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(),
                                                 "path": tfds.features.Text()}),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # keep documents in path order
        )

    def _split_generators(self, dl_manager):
        docs, skipped = _stdlib_documents()
        held = set(held_out_indices([path for path, _ in docs], self.valid_percent))
        valid = [d for i, d in enumerate(docs) if i in held]
        train = [d for i, d in enumerate(docs) if i not in held]
        self.info.metadata.update({
            "python": sys.version.split()[0], "skipped_not_utf8": skipped,
            "text_bytes": {"train": sum(len(t.encode()) for _, t in train),
                           "validation": sum(len(t.encode()) for _, t in valid)},
        })
        return {"train": self._generate_examples(train), "validation": self._generate_examples(valid)}

    def _generate_examples(self, docs: list[tuple[str, str]]):
        for path, text in docs:
            yield path, {"text": text, "path": path}


def corpus_builder(cache_dir: str, valid_percent: float) -> RadialStdlibCorpus:
    """The builder, prepared: built into `<cache_dir>/tfds` on first use and reused after."""
    data_dir = Path(cache_dir).expanduser() / "tfds"
    with _quiet_tfds():
        builder = RadialStdlibCorpus(valid_percent=valid_percent, data_dir=str(data_dir),
                                     file_format="array_record")
        prepared = builder.is_prepared()
    if prepared:
        print(f"reusing the builtin corpus at {builder.data_dir}", flush=True)
        return builder
    print(f"building the builtin corpus (Python {sys.version.split()[0]} stdlib sources and "
          f"help topics) into {builder.data_dir} ...", flush=True)
    start = time.perf_counter()
    with _quiet_tfds():
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        except Exception:
            # Another process sharing the cache may have finished the same build first.
            builder = RadialStdlibCorpus(valid_percent=valid_percent, data_dir=str(data_dir),
                                         file_format="array_record")
            if not builder.is_prepared():
                raise
            print(f"reusing the builtin corpus at {builder.data_dir} (built by another process)",
                  flush=True)
            return builder
    meta, splits = builder.info.metadata, builder.info.splits
    n_bytes = sum(meta["text_bytes"].values())
    skipped = meta["skipped_not_utf8"]
    note = f"; skipped {len(skipped)} files that are not UTF-8" if skipped else ""
    print(f"built the builtin corpus: {splits['train'].num_examples + splits['validation'].num_examples} "
          f"documents ({splits['train'].num_examples} train, {splits['validation'].num_examples} "
          f"valid), {n_bytes / 1e6:.1f} MB, in {time.perf_counter() - start:.1f} s{note}", flush=True)
    return builder


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS prints banners and progress bars and warns about configs not declared on the class;
    our own lines say what happens. Progress bars are left on afterwards (TFDS's default)."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)
        absl.setLevel(level)


def corpus_split(builder: RadialStdlibCorpus, split: Literal["train", "valid"]):
    """The split as an `ArrayRecordDataSource` of `{"text": bytes, "path": bytes}`."""
    return builder.as_data_source(split=SPLITS[split])
