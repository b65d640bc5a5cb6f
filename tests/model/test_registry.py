"""MLflow tracking, registration and the quality gate, against a real `mlflow server`."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkcast.config import GateParams, HistGradientBoostingParams, Params, TrackingParams
from forkcast.data.prepare import Splits
from forkcast.model.evaluate import evaluate
from forkcast.model.registry import CANDIDATE, PRODUCTION, judge, promote, save_gate, track_and_register
from forkcast.model.train import TrainedModel, train

from ..conftest import BIN, free_port, tool_env


def test_the_first_version_is_eligible() -> None:
    verdict = judge(GateParams(), "1", {"rmse": 50.0, "mae": 30.0}, None, None)
    assert verdict.eligible
    assert "nothing to compare against" in verdict.reason


def test_a_production_model_of_other_data_is_named_not_compared() -> None:
    """After another dataset is swapped in, production cannot score the new test rows: the gate says so."""
    verdict = judge(
        GateParams(), "4", {"rmse": 0.4}, "3", None, incomparable="was trained on inputs the data no longer has (hr)"
    )
    assert verdict.eligible
    assert verdict.production_version is None
    assert verdict.reason.startswith(
        "production v3 was trained on inputs the data no longer has (hr): nothing to compare"
    )


@pytest.mark.parametrize(
    ("candidate", "eligible", "words"),
    [
        (50.0, True, "no change"),
        (52.4, True, "4.8% worse"),
        (52.6, False, "5.2% worse"),
        (40.0, True, "20.0% better"),
    ],
)
def test_the_gate_allows_at_most_the_tolerance(candidate: float, eligible: bool, words: str) -> None:
    verdict = judge(GateParams(metric="rmse", tolerance=0.05), "2", {"rmse": candidate}, "1", {"rmse": 50.0})
    assert verdict.eligible is eligible
    assert words in verdict.reason
    assert verdict.allowed_value == pytest.approx(52.5)


def test_exactly_at_the_tolerance_passes_despite_float_rounding() -> None:
    # 100 * 1.15 is 114.99999999999999 in floating point.
    verdict = judge(GateParams(tolerance=0.15), "2", {"rmse": 115.0}, "1", {"rmse": 100.0})
    assert verdict.eligible


def test_a_perfect_production_model_is_only_matched_not_beaten() -> None:
    assert judge(GateParams(tolerance=0.5), "2", {"rmse": 0.0}, "1", {"rmse": 0.0}).eligible
    worse = judge(GateParams(tolerance=0.5), "2", {"rmse": 0.1}, "1", {"rmse": 0.0})
    assert not worse.eligible
    assert "worse than a perfect production model" in worse.reason


def test_the_gate_uses_the_configured_metric() -> None:
    verdict = judge(
        GateParams(metric="mae", tolerance=0.0), "2", {"rmse": 1.0, "mae": 31.0}, "1", {"rmse": 99.0, "mae": 30.0}
    )
    assert not verdict.eligible
    assert verdict.metric == "mae"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server with a SQLite store and proxied artifacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = (root / "server.log").open("w")
    server = subprocess.Popen(command, cwd=root, env=tool_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def good_model(splits: Splits, params: Params) -> TrainedModel:
    return train(params, splits.as_dict(), params.dataset.inputs(), data_hash="d41d8cd98f00b204e9800998ecf8427e.dir")


LINEAGE = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "data_hash": "d41d8cd98f00b204e9800998ecf8427e.dir",
    "stage_hashes": {"train": "aaa", "evaluate": "bbb"},
}


def register(params: Params, model: TrainedModel, splits: Splits, tmp_path: Path):  # type: ignore[no-untyped-def]
    inputs = params.dataset.inputs()
    evaluation = evaluate(model.pipeline, splits.train, splits.test, inputs, params.dataset.seasonal_keys)
    report = tmp_path / "report.json"
    report.write_text('{"passed": true}')
    return track_and_register(
        params=params, pipeline=model.pipeline, inputs=inputs, test=splits.test, evaluation=evaluation.metrics,
        metadata=model.metadata, lineage=LINEAGE, artifacts=[report], local_dir=tmp_path / ".mlflow",
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_runs_versions_aliases_and_the_gate_on_a_real_server(
    mlflow_server: str,
    good_model: TrainedModel,
    splits: Splits,
    params: Params,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params = params.model_copy(
        update={"tracking": TrackingParams(experiment="registry-test", registered_model="demand-test")}
    )
    name = params.tracking.registered_model

    first = register(params, good_model, splits, tmp_path)
    assert first.verdict.eligible
    assert first.tracking_uri == mlflow_server
    assert not (tmp_path / ".mlflow").exists()  # nothing written locally when a server is configured

    client = MlflowClient(mlflow_server)
    run = client.get_run(first.run_id)
    assert run.data.params["model"] == "hist_gradient_boosting"
    assert run.data.params["hist_gradient_boosting.max_iter"] == "100"
    assert run.data.metrics["test_rmse"] < run.data.metrics["baseline_rmse"]
    assert run.data.tags["git_commit"] == LINEAGE["git_commit"]
    assert run.data.tags["data_hash"] == LINEAGE["data_hash"]
    assert run.data.tags["dvc_stage.train"] == "aaa"
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "reports")}
    assert {"reports/report.json", "reports/gate.json"} <= artifacts

    version = client.get_model_version_by_alias(name, CANDIDATE)
    assert version.version == first.version
    assert version.tags["gate"] == "eligible"
    assert version.tags["data_hash"] == LINEAGE["data_hash"]
    served = mlflow.pyfunc.load_model(f"models:/{name}@{CANDIDATE}")
    assert served.metadata.signature is not None
    loaded = served.predict(splits.test[good_model.metadata["features"]].head(50))
    expected = good_model.pipeline.predict(splits.test[good_model.metadata["features"]].head(50))
    assert list(loaded.round(6)) == list(expected.round(6))

    # Production is v1; a much worse model is registered but refused, and says by how much.
    promote(tmp_path / ".mlflow", params, first.version)
    weak = params.train.model_copy(update={"hist_gradient_boosting": HistGradientBoostingParams(max_iter=2)})
    worse_params = params.model_copy(update={"train": weak})
    worse = register(
        worse_params, train(worse_params, splits.as_dict(), params.dataset.inputs(), None), splits, tmp_path
    )
    assert not worse.verdict.eligible
    assert worse.verdict.production_version == first.version
    assert "worse" in worse.verdict.reason
    assert client.get_model_version_by_alias(name, PRODUCTION).version == first.version
    assert client.get_model_version_by_alias(name, CANDIDATE).version == worse.version
    assert client.get_model_version(name, worse.version).tags["gate"] == "rejected"

    # The same model again scores exactly like production: eligible.
    again = register(params, good_model, splits, tmp_path)
    assert again.verdict.eligible
    assert again.verdict.candidate_value == pytest.approx(again.verdict.production_value)

    save_gate(worse, tmp_path / "gate.json", tmp_path / "gate.md")
    assert "REJECTED" in (tmp_path / "gate.md").read_text()


@pytest.mark.slow
@pytest.mark.integration
def test_default_tracking_is_a_local_store_with_no_server(
    good_model: TrainedModel, splits: Splits, params: Params, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    registration = register(params, good_model, splits, tmp_path)
    assert registration.tracking_uri.startswith("sqlite:///")
    assert (tmp_path / ".mlflow" / "mlflow.db").exists()
    assert list((tmp_path / ".mlflow" / "artifacts").rglob("MLmodel"))
    assert not (tmp_path / "mlruns").exists()
