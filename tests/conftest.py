"""Shared fixtures: the example datasets (pulled from the project's DVC remote), params, project copies.

The `example` fixture is the bike data, unless a test is marked `datasets`: then it runs once per example
dataset (the bike rentals and the electricity demand of examples/electricity), and every fixture built on it
(params, splits, the trained model, the bento) follows.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
import yaml

from forkcast.config import Params, load_params
from forkcast.data import declaration
from forkcast.data.declaration import Dataset
from forkcast.data.prepare import Splits, build_features, load_raw, split_by_time
from forkcast.model.train import TrainedModel, train
from forkcast.serving import build

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's console scripts: dvc, forkcast, mlflow
ELECTRICITY = ROOT / "examples" / "electricity"

# What a fresh clone holds: the tracked files a project copy needs (data comes from `dvc pull`).
PROJECT_FILES = (
    "src", "pyproject.toml", "params.yaml", "dataset.yaml", "dvc.yaml", "dvc.lock", "data.dvc", "feed.dvc",
    ".gitignore", "bentofile.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore", ".dvc/storage", "Makefile",
    "README.md", "outputs/evaluation/metrics.json", "outputs/evaluation/backtest.json",
    "outputs/validation/report.json", "uv.lock", ".github", "deploy",
    "bin", "examples",
)  # fmt: skip


@dataclass(frozen=True)
class Example:
    """One example dataset: its declaration, its data file here, and what pulls it from the DVC remote."""

    name: str
    declaration: Path
    data: Path
    dvc_file: str

    @property
    def dataset(self) -> Dataset:
        return declaration.load(self.declaration)


EXAMPLES = {
    "bikes": Example("bikes", ROOT / "dataset.yaml", ROOT / "data" / "bikeshare_hourly.csv", "data.dvc"),
    "electricity": Example(
        "electricity",
        ELECTRICITY / "dataset.yaml",
        ELECTRICITY / "victoria_electricity_2014_halfhourly.csv",
        "examples/electricity/victoria_electricity_2014_halfhourly.csv.dvc",
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `datasets` run once per example dataset."""
    if "example" in metafunc.fixturenames and metafunc.definition.get_closest_marker("datasets"):
        metafunc.parametrize("example", list(EXAMPLES), indirect=True, scope="session")


def pytest_configure(config: pytest.Config) -> None:
    """bentoml reads BENTOML_HOME once, at import: give the whole session its own store, never ~/bentoml."""
    os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="forkcast-tests-bentoml-")
    os.environ["BENTOML_DO_NOT_TRACK"] = "True"


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.get("BENTOML_HOME", ""), ignore_errors=True)


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for the project's tools in a subprocess: no telemetry, the venv first on PATH."""
    # No BENTOML_HOME either: a project keeps its bentos in its own .bentoml/, as in a fresh clone.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "BENTOML_HOME"))}
    env |= {
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "true",
        "GIT_AUTHOR_NAME": "Forkcast Tests",
        "GIT_AUTHOR_EMAIL": "tests@forkcast.invalid",
        "GIT_COMMITTER_NAME": "Forkcast Tests",
        "GIT_COMMITTER_EMAIL": "tests@forkcast.invalid",
    }
    return env | extra


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=tool_env(**env), capture_output=True, text=True, check=False)


def run_ok(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    result = run(args, cwd, **env)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def start_mlflow_server(root: Path, port: int) -> subprocess.Popen[bytes]:
    """A real tracking server (SQLite store, proxied artifacts under `root`) in a session of its own (killpg ends
    its workers too), once it answers /health."""
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    with (root / "server.log").open("ab") as log:
        server = subprocess.Popen(
            command, cwd=root, env=tool_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            os.killpg(server.pid, signal.SIGKILL)
            pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)


def stop_mlflow_server(server: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, sig)
    server.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pull(example: Example) -> Path:
    """The example's data, fetched from the repository's DVC remote when a fresh clone lacks it."""
    if not example.data.exists():
        run_ok(["dvc", "pull", example.dvc_file, *(["feed.dvc"] if example.name == "bikes" else [])], ROOT)
    return example.data


@pytest.fixture(scope="session")
def example(request: pytest.FixtureRequest) -> Example:
    """The bike data, or each example dataset in turn for tests marked `datasets`."""
    chosen = EXAMPLES[getattr(request, "param", "bikes")]
    pull(chosen)
    return chosen


@pytest.fixture(scope="session")
def data_file(example: Example) -> Path:
    """The example's real data file."""
    return example.data


@pytest.fixture(scope="session")
def raw_text(data_file: Path) -> pd.DataFrame:
    """The raw data as text, the way the validate stage reads it."""
    return pd.read_csv(data_file, dtype=str)


@pytest.fixture(scope="session")
def params(example: Example) -> Params:
    """The committed settings with the example's declaration, as the pipeline runs them."""
    return load_params(ROOT / "params.yaml").model_copy(update={"dataset": example.dataset})


@pytest.fixture(scope="session")
def splits(data_file: Path, params: Params) -> Splits:
    data = params.dataset
    return split_by_time(build_features(load_raw(data_file, data), data), params.split)


@pytest.fixture(scope="session")
def trained(splits: Splits, params: Params) -> TrainedModel:
    """The default model, trained once per session (per example) on the real data."""
    return train(params, splits.as_dict(), params.dataset.inputs(), data_hash="abc.dir")


@dataclass(frozen=True)
class Built:
    """A bento built from the session's model, and the build's record and golden cases."""

    tag: str
    output_dir: Path
    lineage: dict[str, Any]

    @property
    def golden(self) -> Path:
        return self.output_dir / build.GOLDEN_JSON.name


@pytest.fixture(scope="session")
def built(trained: TrainedModel, splits: Splits, params: Params, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The session's model built into a bento, in the session's BentoML store."""
    lineage = {
        "model_name": params.tracking.registered_model,
        "model_version": "7",
        "run_id": "run-under-test",
        "data_hash": trained.metadata["data_hash"],
        "git_commit": trained.metadata["git_commit"],
        "trained_at": trained.metadata["trained_at"],
        "metrics": {"test_rmse": 54.8},
        "gate": "eligible",
    }
    output_dir = tmp_path_factory.mktemp("build")
    tag = build_bento(
        trained, splits, params, lineage=lineage, golden_cases=params.smoke.golden_cases, output_dir=output_dir
    )
    # What the bento records: this lineage, or, where a build of the same model came first, that build's.
    recorded = json.loads((output_dir / build.BUILD_JSON.name).read_text())["lineage"]
    return Built(tag, output_dir, recorded)


def model_source(trained: TrainedModel, params: Params, lineage: dict[str, Any]) -> build.ModelSource:
    """`trained` as the build takes a model: pickled, with its ONNX export, input contract and lineage."""
    pipeline_bytes = io.BytesIO()
    joblib.dump(trained.pipeline, pipeline_bytes)
    return build.ModelSource(
        trained.pipeline, pipeline_bytes.getvalue(), trained.onnx, params.dataset.inputs(), lineage
    )


def build_bento(
    trained: TrainedModel,
    splits: Splits,
    params: Params,
    *,
    lineage: dict[str, Any],
    golden_cases: int,
    output_dir: Path,
) -> str:
    """Build `trained` into a bento of the session's store from this checkout's bentofile and code; its tag."""
    source = model_source(trained, params, lineage)
    golden = build.golden_cases(source, splits.test, golden_cases)
    result = build.build(
        source, golden, params, bentofile=ROOT / "bentofile.yaml", source_dir=ROOT / "src", output_dir=output_dir
    )
    return result.bento_tag


def make_project(copy: Path) -> Path:
    """A fresh clone of the project at `copy`: a git repository on main with its data pulled."""
    for name in PROJECT_FILES:
        source, target = ROOT / name, copy / name
        if source.is_dir():  # data DVC pulled here is not part of a clone
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.csv"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    run_ok(["git", "init", "-q", "-b", "main"], copy)
    run_ok(["git", "add", "-A"], copy)
    run_ok(["git", "commit", "-q", "-m", "fresh clone"], copy)
    run_ok(["dvc", "pull", "-q", "data.dvc", "feed.dvc"], copy)
    return copy


def with_ports(project: Path) -> tuple[int, int]:
    """Give the project's local staging and production free ports (tests run side by side); the ports."""
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    ports = free_port(), free_port()
    params["serve"] |= {"staging_port": ports[0], "production_port": ports[1]}
    params["smoke"]["p95_budget_ms"] = 10_000  # the budget's check has its own test; no timing assertions here
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    return ports


@pytest.fixture
def project(tmp_path: Path, example: Example) -> Path:
    """A fresh clone of the project in a temporary directory: a git repository with its data pulled."""
    return make_project(tmp_path / "project")


@pytest.fixture(autouse=True)
def _no_tracking_uri_left_by_another_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """`mlflow.set_tracking_uri()` also sets MLFLOW_TRACKING_URI in os.environ (for subprocesses), so a test that
    tracked in its own store would leave the next test of the worker tracking there: each starts without it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run commands in an empty directory with the project's params and declaration: outputs land there."""
    shutil.copy(ROOT / "params.yaml", tmp_path)
    shutil.copy(ROOT / "dataset.yaml", tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in-process commands from inside a project copy (stages read paths relative to the root)."""
    monkeypatch.chdir(project)
    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    return project
