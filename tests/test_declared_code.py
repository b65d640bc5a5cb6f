"""The code each stage and the service run is declared: DVC reruns a stage when its code changes only if
dvc.yaml lists it, and the bento holds only what bentofile.yaml includes. Both follow the imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

SRC = ROOT / "src"
# Where and how files are written, not what they hold: a change there need not rerun the pipeline.
PLUMBING = {"forkcast/__init__.py", "forkcast/data/__init__.py", "forkcast/model/__init__.py", "forkcast/atomic.py",
            "forkcast/paths.py"}  # fmt: skip


def imported_modules(entry: str) -> set[str]:
    """`entry` and every forkcast module it imports when it runs, transitively (paths relative to src/)."""
    seen: set[str] = set()
    pending = [entry]
    while pending:
        module = pending.pop()
        if module not in seen:
            seen.add(module)
            pending.extend(_imports(SRC / module))
    return seen


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.parse(path.read_text()).body:  # module level: imports inside functions run on demand
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("forkcast"):
            names = [node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names if alias.name.startswith("forkcast")]
        for name in names:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # a package's __init__ runs before its modules
                stem = "/".join(parts[:depth])
                found += [c for c in (f"{stem}/__init__.py", f"{stem}.py") if (SRC / c).is_file()]
    return found


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_each_stage_lists_the_code_it_runs(stage: str) -> None:
    code = [dep.removeprefix("src/") for dep in STAGES[stage]["deps"] if dep.startswith("src/")]
    entry = code[0]  # the stage's own module comes first
    assert imported_modules(entry) - PLUMBING - set(code) == set()


def test_the_bento_includes_every_forkcast_module_the_service_imports() -> None:
    included = set(yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"])
    assert imported_modules("forkcast/serving/service.py") - included == set()


def test_the_check_follows_imports_through_packages() -> None:
    service = imported_modules("forkcast/serving/service.py")
    assert {"forkcast/serving/predictor.py", "forkcast/model/onnx.py", "forkcast/data/expressions.py"} <= service
    assert "forkcast/model/train.py" not in service  # training's code stays out of the bento
