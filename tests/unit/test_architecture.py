"""The house rules of the code's layout, read from the code itself (its imports and string
literals), so that they hold from now on: layers import only downward, no import circles,
small modules, a core of a few packages, one owner of the store's file names."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("pneumo_core", "tasks", "flows")  # each imports only itself and those before it
MAX_LINES = 400
MAX_CORE_MODULES = 10  # .py files directly in pneumo_core/
MIN_CORE_PACKAGES = 4
LAYOUT = "pneumo_core.layout"
MAX_FLOW_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _resolve(name: str) -> str | None:
    """The product module an import names (a name inside a module resolves to the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every product module `module` imports, at any depth of its code (also inside
    functions, where the CLI defers heavy imports)."""
    is_package = MODULES[module].name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: None if is_package else -1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            # `from pkg import submodule` imports the submodule; a name imports its module
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        targets |= {t for name in names if (t := _resolve(name)) and t != module}
    return targets


GRAPH = {module: _imports(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_circles() -> None:
    assert _cycles(GRAPH) == []


def test_the_graph_finds_a_circle_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_module_imports_a_layer_above_its_own() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if rank[target.split(".")[0]] > rank[module.split(".")[0]]
    ]
    assert upward == []


def test_the_core_never_imports_prefect() -> None:
    offenders = []
    for module, tree in TREES.items():
        if not module.startswith("pneumo_core"):
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [module for name in names if name.split(".")[0] == "prefect"]
    assert offenders == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)}: {lines} lines"


def test_the_core_is_a_few_packages_by_stage() -> None:
    core = ROOT / "pneumo_core"
    top_modules = sorted(p.name for p in core.glob("*.py"))
    packages = sorted(p.name for p in core.iterdir() if (p / "__init__.py").is_file())
    assert len(top_modules) <= MAX_CORE_MODULES, top_modules
    assert len(packages) >= MIN_CORE_PACKAGES, packages


def test_the_pipeline_flow_reads_in_one_screen() -> None:
    tree = TREES["flows.pipeline"]
    (flow,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "pipeline"]
    assert flow.end_lineno - flow.lineno + 1 < MAX_FLOW_LINES


def _stored_names() -> set[str]:
    """The file names of the store's layout: layout.py's string constants that name a file
    ("config.json", "stage_2_train_labels.csv", "models/champion.json")."""
    names = set()
    for node in TREES[LAYOUT].body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            value = node.value.value
            if isinstance(value, str) and re.fullmatch(r"[\w/-]+\.\w+", value):
                names.add(value)
    return names


def _code_strings(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, text) of every string constant that is not a docstring, f-string parts included.
    Text with whitespace is prose (a message, a help text), not a key being built."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and not re.search(r"\s", node.value)
    ]


def test_the_stored_file_names_are_written_in_the_layout_only() -> None:
    names = _stored_names()
    assert {"config.json", "done.json", "evaluation.json", "submission.csv"} <= names
    pattern = re.compile(
        r"(?<![\w.-])(" + "|".join(re.escape(n) for n in sorted(names, key=len)[::-1]) + r")\b"
    )
    elsewhere = defaultdict(list)
    for module, tree in TREES.items():
        if module == LAYOUT:
            continue
        for line, text in _code_strings(tree):
            for match in pattern.finditer(text):
                elsewhere[match.group(1)].append(f"{MODULES[module].relative_to(ROOT)}:{line}")
    assert dict(elsewhere) == {}


def test_the_name_check_sees_keys_built_in_f_strings() -> None:
    tree = ast.parse('def f(run_id):\n    return f"runs/{run_id}/done.json"\n')
    assert (2, "/done.json") in _code_strings(tree)
