"""MLflow tracking, registration and the quality gate, against a real `mlflow server`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkcast import atomic
from forkcast.cli import main
from forkcast.config import HistGradientBoostingParams, Params, TrackingParams
from forkcast.data.prepare import Splits
from forkcast.model import history as versions
from forkcast.model.backtest import all_rows, backtest, make_folds
from forkcast.model.evaluate import evaluate
from forkcast.model.refit import refit
from forkcast.model.registry import CANDIDATE, PRODUCTION, RELEASED_AT, promote, save_gate, track_and_register
from forkcast.model.train import TrainedModel, train

from ..conftest import free_port, start_mlflow_server, stop_mlflow_server


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server with a SQLite store and proxied artifacts."""
    port = free_port()
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    yield f"http://127.0.0.1:{port}"
    stop_mlflow_server(server)


@pytest.fixture(scope="module")
def good_model(splits: Splits, params: Params) -> TrainedModel:
    return train(params, splits.as_dict(), params.dataset.inputs(), data_hash="d41d8cd98f00b204e9800998ecf8427e.dir")


LINEAGE = {
    "git_commit": "0123456789abcdef0123456789abcdef01234567",
    "data_hash": "d41d8cd98f00b204e9800998ecf8427e.dir",
    "stage_hashes": {"train": "aaa", "evaluate": "bbb"},
}


def register(params: Params, model: TrainedModel, splits: Splits, tmp_path: Path):  # type: ignore[no-untyped-def]
    """What the backtest, refit and register stages do, for `model`'s settings."""
    inputs = params.dataset.inputs()
    data = all_rows(splits.as_dict())
    evaluation = evaluate(model.pipeline, splits.train, splits.test, inputs, params.dataset.seasonal_keys)
    folds = make_folds(data["timestamp"], inputs.frequency, params.backtest)
    result = backtest(params.train, data, inputs, folds, seasonal_keys=params.dataset.seasonal_keys)
    released = refit(params, splits.as_dict(), inputs, model, data_hash=None)
    report, metadata = tmp_path / "report.json", tmp_path / "metadata.json"
    report.write_text('{"passed": true, "summary": {"share_of_checks_passed": 1.0}}')  # the data checks' report
    atomic.write_json(metadata, released.metadata)
    return track_and_register(
        params=params, pipeline=released.pipeline, inputs=inputs, data=data, backtest=result,
        evaluation=evaluation.metrics, metadata=released.metadata, lineage=LINEAGE, artifacts=[report, metadata],
        local_dir=tmp_path / ".mlflow", onnx=released.onnx,
    )  # fmt: skip


def with_max_iter(params: Params, max_iter: int) -> Params:
    settings = params.train.model_copy(update={"hist_gradient_boosting": HistGradientBoostingParams(max_iter=max_iter)})
    return params.model_copy(update={"train": settings})


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
    assert run.data.metrics["backtest_model_rmse_mean"] < run.data.metrics["backtest_baseline_rmse_mean"]
    assert run.data.params["train.refit_on_all"] == "True"
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
    # The registered model is the served one: the same settings refit on every row (deterministic, seeded).
    served_model = refit(params, splits.as_dict(), params.dataset.inputs(), good_model, data_hash=None).pipeline
    expected = served_model.predict(splits.test[good_model.metadata["features"]].head(50))
    assert list(loaded.round(6)) == list(expected.round(6))

    # Production is v1; a much worse model is registered but refused by the baseline and by production.
    promote(tmp_path / ".mlflow", params, first.version)
    assert client.get_model_version(name, first.version).tags[RELEASED_AT]
    weak = with_max_iter(params, 2)
    worse = register(weak, train(weak, splits.as_dict(), params.dataset.inputs(), None), splits, tmp_path)
    assert not worse.verdict.eligible
    failed = {c.against for c in worse.verdict.comparisons if not c.passed}
    assert failed == {"the seasonal baseline", f"production v{first.version}"}
    assert client.get_model_version_by_alias(name, PRODUCTION).version == first.version
    assert client.get_model_version_by_alias(name, CANDIDATE).version == worse.version
    assert client.get_model_version(name, worse.version).tags["gate"] == "rejected"

    # The same settings again: production was refit on every row, so its settings' backtest is the candidate's.
    again = register(params, good_model, splits, tmp_path)
    assert again.verdict.eligible
    assert again.verdict.production is not None
    assert again.verdict.production.candidate == pytest.approx(again.verdict.production.reference)
    assert "the same result" in again.verdict.production.how

    save_gate(worse, tmp_path / "gate.json", tmp_path / "gate.md")
    assert "REJECTED" in (tmp_path / "gate.md").read_text()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.bikes
def test_a_chain_of_candidates_each_slightly_worse_is_stopped(
    mlflow_server: str, good_model: TrainedModel, splits: Splits, params: Params, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Real models on the real data: max_iter 100, then 45 (3.7% worse on the backtest: released), then 30 (4.7%
    worse than production, 8.6% worse than the first release): the third is refused by the best recent release."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    params = params.model_copy(update={"tracking": TrackingParams(experiment="chain", registered_model="chain-test")})
    local = tmp_path / ".mlflow"
    first = register(params, good_model, splits, tmp_path)
    promote(local, params, first.version)
    step_down = with_max_iter(params, 45)
    second = register(step_down, train(step_down, splits.as_dict(), params.dataset.inputs(), None), splits, tmp_path)
    assert second.verdict.eligible, second.verdict.reason
    promote(local, params, second.version)
    further = with_max_iter(params, 30)
    third = register(further, train(further, splits.as_dict(), params.dataset.inputs(), None), splits, tmp_path)
    assert not third.verdict.eligible
    results = {c.against: c.passed for c in third.verdict.comparisons}
    assert results == {
        "the seasonal baseline": True,
        f"production v{second.version}": True,
        f"release v{first.version}, one of the last 2": False,
    }
    assert all("retrained on the same 8 folds" in c.how for c in third.verdict.comparisons[1:])


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


@pytest.mark.slow
@pytest.mark.integration
def test_history_lists_every_version_with_its_lineage_params_changes_metrics_and_deployments(
    good_model: TrainedModel, splits: Splits, params: Params, in_tmp: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Journey 8, "which version worked on which data?": two real models on the real data, one released."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["history"]) == 3  # nothing registered yet: said, not failed
    assert "no version of forkcast-demand is registered yet" in capsys.readouterr().err
    first = register(params, good_model, splits, in_tmp)
    promote(in_tmp / ".mlflow", params, first.version)
    versions.append_deployment(versions.DeploymentEvent(
        at="2026-01-31T09:00:00+00:00", environment="production", target="local", model_version=first.version,
        bento="forkcast:v1-0123456789ab", approved_by="alice",
    ))  # fmt: skip
    fewer = with_max_iter(params, 30)
    second = register(fewer, train(fewer, splits.as_dict(), params.dataset.inputs(), None), splits, in_tmp)
    capsys.readouterr()
    assert main(["history", "--json"]) == 0
    listed = {entry["version"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert list(listed) == [first.version, second.version]
    old, new = listed[first.version], listed[second.version]
    for entry in (old, new):
        assert (entry["git_commit"], entry["data_hash"]) == (LINEAGE["git_commit"], LINEAGE["data_hash"])
        assert entry["checks_passed"] == 1.0
        assert entry["metrics"]["test_rmse"] > 0
        assert entry["metrics"]["backtest_model_rmse_std"] > 0
    assert new["params_changed"] == {"hist_gradient_boosting.max_iter": ["100", "30"]}
    assert old["params_changed"] == {}
    assert (old["aliases"], old["gate"], old["released_at"] is not None) == (["production"], "eligible", True)
    assert new["gate"] == ("eligible" if second.verdict.eligible else "rejected")
    assert new["metrics"]["backtest_model_rmse_mean"] > old["metrics"]["backtest_model_rmse_mean"]  # 30 trees fit worse
    assert [(d["environment"], d["approved_by"]) for d in old["deployments"]] == [("production", "alice")]
    assert new["deployments"] == []
    assert main(["history"]) == 0
    table = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.startswith("│ ") and line[2] != " "}
    assert "eligible" in rows[f"v{first.version}"]
    assert "production" in rows[f"v{first.version}"]
    assert new["gate"] in rows[f"v{second.version}"]
    assert "alice" in table  # who approved the deployment, in the version's row
    assert f"v{second.version}: hist_gradient_boosting.max_iter 100 → 30" in table
