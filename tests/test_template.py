"""The package knows no example's data: what the data looks like is declared in dataset.yaml, and only there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .conftest import EXAMPLES, ROOT

SRC = ROOT / "src" / "forkcast"
# Names that are also the template's own vocabulary (calendar features, `timestamp`), not an example's columns.
VOCABULARY = {"month", "weekday", "holiday", "hour", "timestamp", "day"}


def named_columns(path: Path, columns: set[str]) -> list[str]:
    """Where a module names one of `columns`: a string "hr", a name or an attribute (frame.hr), also inside the
    braces of an f-string (the text of an f-string is prose: "registered v3" names no column)."""
    tree = ast.parse(path.read_text())
    prose = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in columns and id(node) not in prose:
            found.append((node.lineno, f"{path.name}:{node.lineno} {node.value!r}"))
        elif isinstance(node, ast.Name) and node.id in columns:
            found.append((node.lineno, f"{path.name}:{node.lineno} {node.id}"))
        elif isinstance(node, ast.Attribute) and node.attr in columns:
            found.append((node.lineno, f"{path.name}:{node.lineno} .{node.attr}"))
    return [text for _, text in sorted(found)]


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_no_module_names_an_example_column(example: str) -> None:
    """A forker's data has other columns: no code may depend on the example's names."""
    columns = set(EXAMPLES[example].dataset.columns) - VOCABULARY
    assert len(columns) >= 4  # the check looks for something
    found = [line for path in sorted(SRC.rglob("*.py")) for line in named_columns(path, columns)]
    assert found == []


def test_the_check_catches_a_column_named_in_code(tmp_path: Path) -> None:
    module = tmp_path / "leaky.py"
    module.write_text('X = frame["weathersit"]\nY = frame.hr\nZ = f"{bikers} rode"\nW = "bikers are people"\n')
    assert named_columns(module, {"weathersit", "hr", "bikers"}) == [
        "leaky.py:1 'weathersit'", "leaky.py:2 .hr", "leaky.py:3 bikers",
    ]  # fmt: skip


LINE = ("data", "model", "serving", "release", "monitoring")  # the order of the line


def imported_groups(path: Path) -> set[str]:
    """The groups of the line a module imports from (`forkcast.model.onnx` -> model)."""
    groups = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("forkcast"):
            names = [node.module] if node.module != "forkcast" else [f"forkcast.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("forkcast")]
        else:
            continue
        groups |= {name.split(".")[1] for name in names if name.count(".") >= 1 and name.split(".")[1] in LINE}
    return groups


def test_imports_run_one_way_down_the_line() -> None:
    """Serving may use the model and the data, never the reverse; monitoring may use everything before it."""
    upward = []
    for position, group in enumerate(LINE):
        for path in sorted((SRC / group).rglob("*.py")):
            later = imported_groups(path) & set(LINE[position + 1 :])
            if later:
                upward.append(f"{path.relative_to(SRC)} imports {', '.join(sorted(later))}")
    assert upward == []
    assert imported_groups(SRC / "serving" / "predictor.py") >= {"model", "data"}  # the check sees imports
