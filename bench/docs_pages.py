"""The reference pages generated from the code, so that they cannot drift from it:
docs/configuration.md (every run configuration field and environment setting, from their
pydantic models) and docs/cli.md (every `pneumo` command and flag, from its parser). Each
page's prose is written by hand around marked blocks that this module writes.

    .venv/bin/python -m bench.docs_pages            # exit 1, naming the pages, when stale
    .venv/bin/python -m bench.docs_pages --write    # rewrite the blocks (what `make docs` runs)

A field's meaning comes from its source: the pydantic `description`, else the docstring
under the field, else the `#` comment on the field's lines or the comment block just above
it. `MEANINGS` says what a field is where its source says nothing (or only a condition);
tests/unit/test_docs.py holds that every field has a meaning and `MEANINGS` names no field
that is gone.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import sys
import tokenize
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bench.docs_meanings import MEANINGS

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "make docs"  # the command that rewrites the generated blocks
NOTICE = f"<!-- written from the code by `{REGENERATE}`: edit the code, not this part -->"

BYTE_FIELDS = ("max_dicom_bytes", "ingest_max_bytes")  # shown in MiB or GiB too


# --- reading the models ----------------------------------------------------------------------


@cache
def _source_notes(klass: type) -> dict[str, str]:
    """Per field of `klass`'s own body: the docstring under it, else the `#` comments on
    its lines, else the comment block just above it (a one-word block is a heading)."""
    source = inspect.getsource(klass)
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    comments: dict[int, tuple[str, bool]] = {}  # row -> (text, whole line is a comment)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            comments[token.start[0]] = (text, token.line.strip().startswith("#"))
    notes: dict[str, str] = {}
    for i, node in enumerate(body.body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        after = body.body[i + 1] if i + 1 < len(body.body) else None
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            notes[node.target.id] = " ".join(after.value.value.split())
            continue
        rows = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        trailing = [comments[r][0] for r in rows if r in comments and not comments[r][1]]
        above: list[str] = []
        row = node.lineno - 1
        while row in comments and comments[row][1]:
            above.insert(0, comments[row][0])
            row -= 1
        if trailing:
            notes[node.target.id] = " ".join(trailing)
        elif above and " " in " ".join(above):
            notes[node.target.id] = " ".join(above)
    return notes


def _defined_in(model: type[BaseModel], name: str) -> type:
    """The class in `model`'s hierarchy whose body declares field `name`."""
    for klass in model.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return klass
    raise LookupError(name)


def meaning(model: type[BaseModel], name: str, key: str | None = None) -> str:
    """What field `name` of `model` (dotted `key` in the configuration) means; empty when
    nothing says."""
    info = model.model_fields[name]
    if info.description:
        return " ".join(info.description.split())
    note = _source_notes(_defined_in(model, name)).get(name, "")
    return " ".join(_sentence(t) for t in (MEANINGS.get(key or name, ""), note) if t)


def _sentence(text: str) -> str:
    """A comment as a sentence: capitalised (unless its first word holds a digit), full stop."""
    first = text.split(" ", 1)[0]
    if not any(c.isdigit() for c in first):
        text = text[0].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "choice"
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, type(int | None)) and len(args) == 1:
        return f"{_type_name(args[0])} or none"
    names = {bool: "true/false", int: "integer", float: "number", str: "text", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _range(info: FieldInfo) -> str:
    """The field's limits as written: `≥ 0, < 1`, the choices, or a pattern."""
    if get_origin(info.annotation) is Literal:
        return ", ".join(f"`{c}`" for c in get_args(info.annotation))
    parts = []
    for item in info.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if (bound := getattr(item, attr, None)) is not None:
                parts.append(f"{sign} {_value(bound)}")
        if getattr(item, "min_length", None) == 1:
            parts.append("not empty")
        if (pattern := getattr(item, "pattern", None)) is not None:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts) or "any"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path):
        home = str(Path.home())
        return "~" + str(value)[len(home) :] if str(value).startswith(home) else str(value)
    return str(value)


def _cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and `<`/`>` outside code spans (`<id>` is not
    an HTML tag)."""
    return _prose(text.replace("|", "\\|"))


def _prose(text: str) -> str:
    """One line of markdown: `<`/`>` outside code spans escaped (`<id>` is not a tag)."""
    parts = " ".join(text.split()).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


# --- docs/configuration.md -------------------------------------------------------------------


def _sections() -> list[tuple[str, type[BaseModel], list[str]]]:
    """(dotted prefix, model, its plain fields) of the run configuration and its sections."""
    from pneumo_core.config.run import RunConfig

    plain, nested = [], []
    for name, info in RunConfig.model_fields.items():
        sub = info.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            nested.append((f"{name}.", sub, list(sub.model_fields)))
        else:
            plain.append(name)
    return [("", RunConfig, plain), *nested]


def config_fields() -> list[tuple[str, type[BaseModel], str]]:
    """(dotted key, model, field name) of every run configuration field."""
    return [(f"{p}{n}", model, n) for p, model, names in _sections() for n in names]


def _docstring(model: type) -> str:
    return " ".join(inspect.cleandoc(model.__doc__ or "").split())


def _config_tables() -> list[str]:
    from pneumo_core.config.run import PRESETS, preset

    values = {p: preset(p).to_dict() for p in PRESETS}
    lines: list[str] = []
    for prefix, model, names in _sections():
        title = f"`{prefix}*`" if prefix else "The recipe's top-level fields"
        lines += [*([""] if lines else []), f"### {title}", "", _docstring(model), ""]
        lines.append(_row(["field", "type", "range", *PRESETS, "meaning"]))
        lines.append("|" + " --- |" * (4 + len(PRESETS)))
        for name in names:
            info = model.model_fields[name]
            section = prefix.rstrip(".")
            per_preset = [
                _value(values[p][section][name] if section else values[p][name]) for p in PRESETS
            ]
            cells = [f"`{prefix}{name}`", _type_name(info.annotation), _range(info)]
            lines.append(_row([*cells, *per_preset, meaning(model, name, prefix + name)]))
    return lines


def _byte_note(name: str, value: Any) -> str:
    if name not in BYTE_FIELDS:
        return _value(value)
    for unit, shift in (("GiB", 30), ("MiB", 20)):
        if value % (1 << shift) == 0:
            return f"{value} ({value >> shift} {unit})"
    return str(value)


def _settings_table() -> list[str]:
    from pneumo_core.settings import ENV_PREFIX, Settings

    lines = [
        _row(["variable", "type", "default", "range", "meaning"]),
        "| --- | --- | --- | --- | --- |",
    ]
    for name, info in Settings.model_fields.items():
        default = info.default_factory() if info.default_factory else info.default
        if default is None or default is PydanticUndefined or default is False:
            default = "unset"
        cells = [f"`{ENV_PREFIX}{name.upper()}`", _type_name(info.annotation)]
        cells += [_byte_note(name, default), _range(info), meaning(Settings, name)]
        lines.append(_row(cells))
    return lines


# --- docs/cli.md -----------------------------------------------------------------------------


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=96)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, "")
    return formatter.format_help().strip()


def _flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = (
            ", ".join(f"`{s}`" for s in action.option_strings)
            or f"`{action.metavar or action.dest}`"
        )
        if action.choices:
            value = " | ".join(f"`{c}`" for c in action.choices)
        elif not action.option_strings:
            value = "(argument)"
        elif action.nargs == 0:
            value = "(a switch)"
        else:
            value = f"`{action.metavar or action.dest.upper()}`"
        if isinstance(action, argparse._AppendAction):
            value += ", repeatable"
        required = action.required or not action.option_strings
        default = action.default
        if required or default is None or default is False or default == []:
            default_text = "required" if required else "–"
        else:
            default_text = f"`{_value(default)}`"
        rows.append(_row([name, value, default_text, action.help or ""]))
    return rows


def commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(words after `pneumo`, parser, help) of every command, nested ones included."""
    found = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for word, sub in action.choices.items():
            found.append(((*prefix, word), sub, helps.get(word, "")))
            found += commands(sub, (*prefix, word))
    return found


def _cli_reference() -> list[str]:
    from flows.cli.main import build_parser

    parser = build_parser()
    lines = ["## `pneumo`: the options before the command", ""]
    lines += ["```", _usage(parser), "```", "", *_FLAG_HEAD, *_flag_rows(parser)]
    for words, sub, help_text in commands(parser):
        lines += ["", f"## `pneumo {' '.join(words)}`", "", _prose(_sentence(help_text)), ""]
        if sub.description:
            lines += [_prose(sub.description), ""]
        lines += ["```", _usage(sub), "```"]
        if rows := _flag_rows(sub):
            lines += ["", *_FLAG_HEAD, *rows]
    return lines


_FLAG_HEAD = [_row(["flag", "value", "default", "what it does"]), "| --- | --- | --- | --- |"]


# --- the pages ------------------------------------------------------------------------------

# The generated blocks of each page, between `<!-- generated:NAME:start -->` and
# `<!-- generated:NAME:end -->`; the prose around them is written by hand.
PAGES: dict[str, dict[str, Callable[[], list[str]]]] = {
    "docs/configuration.md": {"run-config": _config_tables, "settings": _settings_table},
    "docs/cli.md": {"cli": _cli_reference},
}


def regenerate(text: str, blocks: dict[str, Callable[[], list[str]]], page: str = "") -> str:
    """`text` with each generated block rebuilt from the code (ValueError: a marker missing)."""
    for name, build in blocks.items():
        start, end = f"<!-- generated:{name}:start -->", f"<!-- generated:{name}:end -->"
        head, found, rest = text.partition(start)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise ValueError(f"{page}: the markers {start} ... {end} are missing")
        body = "\n".join([NOTICE, "", *build()]).strip("\n")
        text = f"{head}{start}\n{body}\n\n{end}{tail}"
    return text


def stale_pages() -> list[str]:
    """The generated pages whose committed text differs from what the code gives now."""
    stale = []
    for page, blocks in PAGES.items():
        text = (ROOT / page).read_text()
        if regenerate(text, blocks, page) != text:
            stale.append(page)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the generated blocks")
    args = parser.parse_args(argv)
    if args.write:
        for page, blocks in PAGES.items():
            path = ROOT / page
            path.write_text(regenerate(path.read_text(), blocks, page))
            print(f"wrote {page}")
        return 0
    stale = stale_pages()
    for page in stale:
        print(f"{page} is stale: run `{REGENERATE}`", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
