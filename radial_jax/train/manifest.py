"""A sha256 manifest of every file of a checkpoint step, written before the step becomes visible and
checked before the step is read.

Orbax checks the shard index of its array files, not their data: flipped bytes inside an array file
restore without complaint. The manifest covers every file (parameters, optimizer state, data
iterator, config, the metadata of each item), so any change to any of them is found. Its format is
`sha256sum`'s: `cd <step folder> && sha256sum -c checksums.sha256` checks a step by hand.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

NAME = "checksums.sha256"
# Orbax rewrites these when it commits the step, after the manifest is written; they hold the
# step's timestamps and commit marker, no data.
UNSEALED = ("_CHECKPOINT_METADATA", "commit_success.txt")


def step_files(step_dir: Path) -> list[str]:
    """Every file under `step_dir` the manifest covers, as sorted POSIX paths relative to it."""
    return sorted(rel for rel in (p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*")
                                  if p.is_file())
                  if rel != NAME and not rel.startswith(".") and rel not in UNSEALED)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_manifest(step_dir: Path) -> Path:
    """Hash every file of `step_dir` into `step_dir/checksums.sha256` (written whole, then renamed)."""
    lines = "".join(f"{_sha256(step_dir / rel)}  {rel}\n" for rel in step_files(step_dir))
    tmp = step_dir / f".{NAME}.tmp"
    with open(tmp, "w") as fh:
        fh.write(lines)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(step_dir / NAME)
    return step_dir / NAME


def has_manifest(step_dir: Path) -> bool:
    return (step_dir / NAME).is_file()


def verify_manifest(step_dir: Path) -> str | None:
    """None if every file the manifest lists is there with the same sha256; otherwise what differs
    (the first few files). A step without a manifest (saved before manifests) is not checked."""
    if not has_manifest(step_dir):
        return None
    problems = []
    for line in (step_dir / NAME).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        if not rel:
            problems.append(f"{NAME}: malformed line {line[:80]!r}")
            continue
        path = step_dir / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif _sha256(path) != digest:
            problems.append(f"{rel} ({path.stat().st_size:,} bytes) differs from what was saved "
                            "(sha256 mismatch)")
    if not problems:
        return None
    more = f", and {len(problems) - 3} more" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more
