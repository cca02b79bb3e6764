"""The README stays true to the code: its commands table lists exactly `radial --help`'s subcommands
(with options they have), its configuration table lists exactly configs/base.yaml's sections and
keys, and its links into docs/ (and the docs pages' links to each other) resolve."""

import argparse
import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from radial_jax.cli import build_parser
from radial_jax.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _table(text: str, header: str) -> list[list[str]]:
    """Cells of the Markdown table whose header row starts with `| header |` (separator row dropped)."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if re.match(rf"\|\s*{header}\s*\|", ln)), None)
    assert start is not None, f"README.md has no table headed `| {header} |`"
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        # split on | outside backticks (`a\|b` in a usage line is one cell)
        cells = re.split(r"(?<!\\)\|", ln.strip().strip("|"))
        rows.append([c.strip() for c in cells])
    return rows


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _commands_table() -> dict[str, str]:
    """subcommand -> its usage cell, from rows like | `radial train CONFIG ...` | what it does |."""
    out = {}
    for usage, *_ in _table(README.read_text(), "command"):
        m = re.fullmatch(r"`radial ([a-z][a-z-]*)([^`]*)`", usage)
        assert m, f"README commands table: {usage!r} is not `radial SUBCOMMAND ...`"
        out[m.group(1)] = m.group(2)
    return out


def test_commands_table_lists_exactly_the_cli_subcommands():
    table, cli = _commands_table(), _subcommands()
    assert sorted(table) == sorted(cli), (
        f"README.md commands table and `radial --help` disagree: only in the README "
        f"{sorted(set(table) - set(cli))}, only in the CLI {sorted(set(cli) - set(table))}")


@pytest.mark.parametrize("name", sorted(_commands_table()))
def test_commands_table_options_exist(name):
    sub = _subcommands().get(name)
    if sub is None:
        pytest.skip("reported by test_commands_table_lists_exactly_the_cli_subcommands")
    known = {opt for a in sub._actions for opt in a.option_strings}
    used = set(re.findall(r"--[a-z][a-z-]*", _commands_table()[name]))
    assert used <= known, f"README.md: `radial {name}` has no option {sorted(used - known)}"


def _config_table() -> dict[str, list[str]]:
    """section -> keys, from rows like | `model` | `kind` (dense, radial), `d_model`, ... |."""
    out = {}
    for section, keys, *_ in _table(README.read_text(), "section"):
        m = re.fullmatch(r"`([a-z_]+)`", section)
        assert m, f"README configuration table: section cell {section!r} is not `name`"
        bare = re.sub(r"\([^()]*\)", "", keys)  # drop the parenthesised choices
        items = [k.strip() for k in bare.split(",") if k.strip()]
        bad = [k for k in items if not re.fullmatch(r"`[a-z_0-9]+`", k)]
        assert not bad, f"README configuration table, section {section}: not a `key`: {bad}"
        out[m.group(1)] = [k.strip("`") for k in items]
    return out


def test_config_table_lists_every_section_and_key_of_base_yaml():
    base = yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())
    table = _config_table()
    assert list(table) == list(base), (
        f"README.md configuration table sections {list(table)} != configs/base.yaml {list(base)}")
    for section, keys in base.items():
        have = table[section]
        assert sorted(have) == sorted(keys), (
            f"README.md configuration table, `{section}`: missing {sorted(set(keys) - set(have))}, "
            f"not in configs/base.yaml {sorted(set(have) - set(keys))}")
        assert len(have) == len(set(have)), f"README.md configuration table, `{section}`: a key twice"


def test_config_table_choices_are_the_schemas():
    """Where the table lists a key's choices, `key` (a, b), they are exactly the schema's Literal."""
    keys = {}
    for sec in dataclasses.fields(Config):
        hints = typing.get_type_hints(sec.default_factory)  # type: ignore[arg-type]
        keys.update({f"{sec.name}.{k}": typing.get_args(t) for k, t in hints.items()
                     if typing.get_origin(t) is typing.Literal})
    for section, cell, *_ in _table(README.read_text(), "section"):
        for key, choices in re.findall(r"`([a-z_0-9]+)` \(([^()]*)\)", cell):
            name = f"{section.strip('`')}.{key}"
            if name in keys:
                listed = [c.strip() for c in choices.split(",")]
                assert sorted(listed) == sorted(keys[name]), (
                    f"README.md configuration table: {name} lists {listed}, the schema allows "
                    f"{list(keys[name])}")


def _anchors(md: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", md.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def _links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)  # not inside code blocks
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def test_readme_links_into_docs_and_docs_links_resolve():
    readme_links = _links(README)
    assert any(t.startswith("docs/") for t in readme_links), "README.md links to no page under docs/"
    broken = []
    for md in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        for target in _links(md):
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
