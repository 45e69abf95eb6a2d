"""The user documentation against the code: the generated pages are current, every
configuration field and setting says what it means, every `pneumo` command and flag the
pages write exists, every link inside the repository lands, and the README stays short."""

from __future__ import annotations

import ast
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from pydantic import BaseModel, Field

from bench import docs_pages
from bench.docs_meanings import MEANINGS
from flows.cli.main import build_parser
from pneumo_core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
MARKDOWN = MarkdownIt("commonmark").enable("table")


def test_the_generated_pages_are_what_the_code_gives() -> None:
    stale = docs_pages.stale_pages()
    assert stale == [], f"{stale} differ from the code: run `{docs_pages.REGENERATE}`"


def test_a_changed_generated_block_is_stale_and_the_prose_around_it_is_kept() -> None:
    page = "docs/configuration.md"
    blocks = docs_pages.PAGES[page]
    current = (ROOT / page).read_text()
    edited = current.replace("| `epochs` |", "| `epochs_typo` |", 1)
    assert edited != current
    assert docs_pages.regenerate(edited, blocks, page) == current
    prose = current.replace("# ", "# A new title: ", 1)
    assert docs_pages.regenerate(prose, blocks, page) == prose


def test_a_page_without_its_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="generated:cli:start"):
        docs_pages.regenerate("# cli\n", docs_pages.PAGES["docs/cli.md"], "docs/cli.md")


def test_every_configuration_field_and_setting_has_a_meaning() -> None:
    missing = [
        key
        for key, model, name in docs_pages.config_fields()
        if not docs_pages.meaning(model, name, key)
    ]
    missing += [name for name in Settings.model_fields if not docs_pages.meaning(Settings, name)]
    assert missing == [], f"say what they mean in the code (a description or comment): {missing}"


def test_the_hand_written_meanings_name_only_fields_that_exist() -> None:
    keys = {key for key, _, _ in docs_pages.config_fields()}
    assert sorted(set(MEANINGS) - keys) == []


class _Sample(BaseModel):
    # heading
    a: int = 1  # trailing comment of a
    # a block above b,
    # on two lines
    b: int = 2
    c: int = Field(3, description="described c")
    d: int = 4
    """The docstring under d."""
    e: int = 5


def test_a_field_means_its_description_docstring_or_comment() -> None:
    meanings = {name: docs_pages.meaning(_Sample, name) for name in _Sample.model_fields}
    assert meanings == {
        "a": "Trailing comment of a.",
        "b": "A block above b, on two lines.",
        "c": "described c",
        "d": "The docstring under d.",
        "e": "",
    }


# -- the commands the pages write -------------------------------------------------------------


def _code(text: str) -> Iterator[str]:
    """The code blocks and code spans of a markdown text."""
    for token in MARKDOWN.parse(text):
        if token.type in ("fence", "code_block"):
            yield token.content
        for child in token.children or []:
            if child.type == "code_inline":
                yield child.content


def _commands(code: str) -> Iterator[list[str]]:
    """Each `pneumo ...` command of a code snippet, as its words: `pneumo` (or a path ending
    in it) first in a command, after any `VAR=value`; continuation lines joined, a comment,
    `&&`, `;` or a spaced `|` ending it (`--network pneumo --gpu-limit 1` is no command)."""
    code = code.replace("\\\n", " ")
    for line in code.splitlines():
        line = re.split(r"(?:^|\s)#", line)[0]
        for command in re.split(r"&&|;|\s\|\s", line):
            words = command.split()
            while words and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):
                words.pop(0)
            if words and re.fullmatch(r"(?:\S*/)?pneumo", words[0]):
                yield words[1:]


def unknown_in(text: str) -> list[str]:
    """The `pneumo` commands and flags `text` writes that the parser does not have."""
    parser = build_parser()
    subcommands = {" ".join(words): sub for words, sub, _ in docs_pages.commands(parser)}
    wrong = []
    for snippet in _code(text):
        for words in _commands(snippet):
            flags: list[str] = []
            while words and words[0].startswith("--"):  # options before the command
                flags.append(words.pop(0))
            if not words or not re.fullmatch(r"[a-z][a-z-]*", words[0]):
                wrong += [f"pneumo {f}" for f in flags if f not in _options(parser)]
                continue
            name = words[0]
            if name not in subcommands:
                wrong.append(f"pneumo {name}")
                continue
            if len(words) > 1 and f"{name} {words[1]}" in subcommands:
                name = f"{name} {words[1]}"
            wrong += [f"pneumo {f}" for f in flags if f not in _options(parser)]
            known = _options(subcommands[name]) | {"--help"}
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", " ".join(words)):
                if flag not in known:
                    wrong.append(f"pneumo {name} {flag}")
    return wrong


def _options(parser: object) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}  # type: ignore[attr-defined]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_flag_a_page_writes_exists(page: Path) -> None:
    assert unknown_in(page.read_text()) == []


def test_an_unknown_command_or_flag_is_found_in_spans_and_blocks() -> None:
    text = (
        "Run `pneumo run --source S --no-such-flag` or `pneumo frobnicate`.\n\n"
        "```bash\npneumo weights fetch --backbone resnet18 \\\n    --storage X --colour red\n"
        "pneumo --debug demo --out d   # a --comment-flag is not a flag\n```\n"
    )
    assert unknown_in(text) == [
        "pneumo run --no-such-flag",
        "pneumo frobnicate",
        "pneumo weights fetch --colour",
    ]


# -- links, length, what a page must not hold -------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    tokens = MARKDOWN.parse(path.read_text())
    seen: Counter[str] = Counter()
    anchors = set()
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open":
            slug = _slug(inline.content.replace("`", ""))
            anchors.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
            seen[slug] += 1
    return anchors


def _links(path: Path) -> Iterator[str]:
    for token in MARKDOWN.parse(path.read_text()):
        for child in token.children or []:
            if child.type == "link_open":
                yield str(child.attrs["href"])


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The links of `page` to a file outside `root` or missing, or to a missing heading."""
    broken = []
    for href in _links(page):
        if re.match(r"[a-z]+:", href):
            continue
        target, _, anchor = href.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.is_relative_to(root) or not path.exists():
            broken.append(f"{href}: no such file in the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{href}: no such heading")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_inside_the_repository_lands(page: Path) -> None:
    assert broken_links(page) == []


def test_a_link_to_a_missing_file_heading_or_outside_is_found(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "b.md").write_text("# B\n\n## `pneumo run` in detail\n")
    page = root / "docs" / "a.md"
    page.write_text(
        "[ok](b.md#pneumo-run-in-detail) [file](c.md) [heading](b.md#nowhere) "
        "[out](../../elsewhere.md) [self](#a) [web](https://example.org/x.md)\n\n# A\n"
    )
    assert broken_links(page, root) == [
        "c.md: no such file in the repository",
        "b.md#nowhere: no such heading",
        "../../elsewhere.md: no such file in the repository",
    ]


def test_the_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_page_names_no_issue_and_no_path_outside_the_repository(page: Path) -> None:
    text = page.read_text()
    found = re.findall(r"\.\./shared|/work/\S+|(?:issue|pull request|PR)\s*#\d+|\s#\d+\b", text)
    assert found == []


def test_the_prediction_batch_the_pages_give_is_the_code_s() -> None:
    tree = ast.parse((ROOT / "pneumo_core/model/predict.py").read_text())
    (batch,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["BATCH"]
        and isinstance(node.value, ast.Constant)
    ]
    said = [
        int(n)
        for page in PAGES
        for n in re.findall(r"[Pp]redict\w* (?:runs|in) batches of (\d+)", page.read_text())
    ]
    assert said and set(said) == {batch}
