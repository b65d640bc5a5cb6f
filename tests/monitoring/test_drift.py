"""`forkcast drift` on the real 2011 bike data, reading inference logs written by the real InferenceLog.

These scenarios are the bike example's: what its calibrated thresholds find in its seasons. The template's part
(column kinds, features and units from the declaration) runs on the electricity example too, at the end.

The model under watch is trained on the even days of January-February 2011 (its reference). "More of the same"
is the odd days of those two months: the same season, weather regime and calendar mix, hours the model never
saw, so an honest "no drift" case rather than the reference again. "Drift" is July: a season the model never saw.
Alternate days are the gentle null (neighbouring days share their weather); the thresholds in params.yaml were
calibrated on harsher ones too (random halves of the days: `python benchmarks/drift.py --calibrate`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from scipy import stats

from forkcast.cli import main
from forkcast.config import Params
from forkcast.data.declaration import Inputs, figure
from forkcast.data.prepare import build_features, load_raw
from forkcast.model.estimator import fit, predict
from forkcast.model.metrics import seasonal_baseline
from forkcast.model.onnx import columns_of_frame
from forkcast.model.train import TrainedModel
from forkcast.monitoring.drift import traffic
from forkcast.serving import deploy
from forkcast.serving.inference_log import InferenceLog

from ..conftest import EXAMPLES, ROOT, Built

DAY = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)  # when the traffic was logged
UNTIL = "2026-03-02T00:00:00Z"  # the end of a one-day window holding it
SMOKE_REQUESTS = 3
REQUEST_SIZE = 24  # records per logged request: one day of hours
INPUTS = EXAMPLES["bikes"].dataset.inputs()

pytestmark = [  # raised while evidently imports; not ours to fix
    pytest.mark.filterwarnings("ignore:numpy.core is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Call to deprecated function 'Dependency'"),
    pytest.mark.filterwarnings("ignore:Use of deprecated class 'DependencyKwarg'"),
]


@dataclass(frozen=True)
class Scenario:
    project: Path  # a project directory: outputs/prepared, outputs/served, outputs/evaluation
    reference: pd.DataFrame  # the model's training rows (even Jan-Feb days), with its predictions
    odd: pd.DataFrame  # more Jan-Feb traffic as logged: request_id, position, features, prediction, actual
    july: pd.DataFrame
    sinks: dict[str, Path]  # odd, july (+ smoke and older traffic), smoke-only
    smoke_rows: int
    test_rmse: float  # the model's error on the odd days, as its evaluation would report it


def bare_project(directory: Path, declaration: Path = ROOT / "dataset.yaml") -> Path:
    """A directory with the project's params.yaml and a declaration, nothing else: no pipeline outputs, no logs."""
    shutil.copy(ROOT / "params.yaml", directory / "params.yaml")
    shutil.copy(declaration, directory / "dataset.yaml")
    return directory


def log_requests(
    sink: Path, frame: pd.DataFrame, start: dt.datetime, prefix: str, inputs: Inputs = INPUTS, size: int = REQUEST_SIZE
) -> pd.DataFrame:
    """Log `frame` through the real writer, one request per `size` rows; each row's request id and position."""
    log = InferenceLog(str(sink), inputs, environment="production", flush_seconds=3600)
    ids: list[str] = []
    positions: list[int] = []
    try:
        for number, begin in enumerate(range(0, len(frame), size)):
            chunk = frame.iloc[begin : begin + size]
            request_id = f"{prefix}{number:05d}"
            when = start + dt.timedelta(minutes=number)
            log.append(
                request_id, "1", columns_of_frame(chunk, inputs.names), chunk["prediction"].to_numpy(), timestamp=when
            )
            ids += [request_id] * len(chunk)
            positions += list(range(len(chunk)))
    finally:
        log.close()
    return frame.assign(request_id=ids, position=positions)


def write_model(project: Path, pipeline: Any, reference: pd.DataFrame, inputs: Inputs, errors: pd.Series) -> float:
    """The pipeline outputs the drift job reads: the training split, the model, its metadata and metrics."""
    for directory in ("prepared", "served", "evaluation"):
        (project / "outputs" / directory).mkdir(parents=True, exist_ok=True)
    reference.drop(columns="prediction").to_parquet(project / "outputs/prepared/train.parquet", index=False)
    joblib.dump(pipeline, project / "outputs/served/model.joblib")
    metadata = {
        "data_hash": "janfeb-even.dir",
        "trained_at": "2026-02-28T00:00:00+00:00",
        "splits": {"train": {"rows": len(reference), "start": reference["timestamp"].min().isoformat()}},
        "inputs": inputs.model_dump(mode="json"),
    }
    (project / "outputs/served/metadata.json").write_text(json.dumps(metadata))
    test_rmse = float(np.sqrt(np.mean(errors**2)))
    metrics = {"model": {"rmse": test_rmse, "mae": float(np.mean(np.abs(errors)))}}
    (project / "outputs/evaluation/metrics.json").write_text(json.dumps(metrics))
    return test_rmse


@pytest.fixture(scope="module")
def scenario(data_file: Path, params: Params, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    dataset = params.dataset
    features = build_features(load_raw(data_file, dataset), dataset)
    day = (features["timestamp"] - pd.Timestamp("2011-01-01")).dt.days + 1
    target = dataset.target
    even = features[(day <= 59) & (day % 2 == 0)].reset_index(drop=True)
    odd = features[(day <= 59) & (day % 2 == 1)].reset_index(drop=True)
    july = features[features["timestamp"].dt.month == 7].reset_index(drop=True)
    pipeline = fit(params.train, even, INPUTS)
    even, odd, july = (
        frame.assign(prediction=predict(pipeline, frame, INPUTS.target).to_numpy()) for frame in (even, odd, july)
    )
    odd_error = odd["prediction"] - odd[target]

    project = bare_project(tmp_path_factory.mktemp("drift-project"))
    test_rmse = write_model(project, pipeline, even, INPUTS, odd_error)

    logs = tmp_path_factory.mktemp("logs")
    sinks = {name: logs / name for name in ("odd", "july", "smoke-only")}
    odd_logged = log_requests(sinks["odd"], odd.rename(columns={target: "actual"}), DAY, "odd-")
    july_logged = log_requests(sinks["july"], july.rename(columns={target: "actual"}), DAY, "july-")
    smoke = odd.head(SMOKE_REQUESTS * REQUEST_SIZE)  # winter rows: they would dilute July if they were counted
    for sink in (sinks["july"], sinks["smoke-only"]):
        log_requests(sink, smoke, DAY + dt.timedelta(hours=2), "smoke-")
    log_requests(sinks["july"], odd, DAY - dt.timedelta(days=3), "older-")  # before the window
    return Scenario(project, even, odd_logged, july_logged, sinks, len(smoke), test_rmse)


def run_drift(project: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """`forkcast drift ARGS` in `project`; its exit code and the drift.json it wrote (empty when it wrote none)."""
    env = args[args.index("--env") + 1] if "--env" in args else "production"
    report = project / "outputs" / "drift" / env / "drift.json"
    before = report.stat().st_mtime_ns if report.exists() else None
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        patch.delenv("FORKCAST_INFERENCE_LOG", raising=False)
        code = main(["drift", *args])
    written = report.exists() and report.stat().st_mtime_ns != before
    return code, json.loads(report.read_text()) if written else {}


@dataclass(frozen=True)
class Run:
    code: int
    outcome: dict[str, Any]
    directory: Path  # a copy of outputs/drift/<env> as that run left it


def kept_run(scenario: Scenario, copy_to: Path, *args: str) -> Run:
    code, outcome = run_drift(scenario.project, *args)
    shutil.copytree(scenario.project / "outputs" / "drift" / "production", copy_to)
    return Run(code, outcome, copy_to)


@pytest.fixture(scope="module")
def july_run(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Run:
    copy = tmp_path_factory.mktemp("july-run") / "production"
    return kept_run(scenario, copy, "--sink", str(scenario.sinks["july"]), "--until", UNTIL)


@pytest.fixture(scope="module")
def odd_run(scenario: Scenario, tmp_path_factory: pytest.TempPathFactory) -> Run:
    copy = tmp_path_factory.mktemp("odd-run") / "production"
    return kept_run(scenario, copy, "--sink", str(scenario.sinks["odd"]), "--until", UNTIL)


def normed_wasserstein(reference: pd.Series, logged: pd.Series) -> float:
    """Wasserstein distance in reference standard deviations, on values as the log stores them (float32)."""
    current = logged.to_numpy(np.float32).astype(np.float64)
    return float(stats.wasserstein_distance(reference.to_numpy(np.float64), current) / np.std(reference))


def per_feature(outcome: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["feature"]: row for row in outcome["input_drift"]["per_feature"]}


# --- the verdicts -------------------------------------------------------------------------------------------


def test_a_january_february_model_sees_july_as_drift(july_run: Run, scenario: Scenario, params: Params) -> None:
    outcome, monitor = july_run.outcome, params.monitor
    assert july_run.code == 1
    assert outcome["verdict"] == "drift"
    inputs = outcome["input_drift"]
    assert inputs["detected"]
    assert inputs["share"] >= monitor.drift_share
    assert inputs["drifted_features"] == sum(row["drifted"] for row in inputs["per_feature"])
    drifted = {name for name, row in per_feature(outcome).items() if row["drifted"]}
    assert {"season", "month", "temp", "atemp"} <= drifted  # summer is warmer, and a season it never saw
    assert outcome["prediction_drift"]["drifted"]
    assert outcome["prediction_drift"]["score"] >= monitor.prediction_threshold
    assert any(reason.startswith("input drift") for reason in outcome["reasons"])
    assert any(reason.startswith("prediction drift") for reason in outcome["reasons"])
    assert outcome["performance"] is None  # no labels yet


def test_the_window_holds_only_real_traffic_from_its_days(july_run: Run, scenario: Scenario) -> None:
    rows = july_run.outcome["rows"]
    assert rows["in_window"] == rows["compared"] == len(scenario.july)  # not the older traffic, not smoke
    assert rows["smoke_dropped"] == scenario.smoke_rows
    assert rows["sampled"] is False
    assert july_run.outcome["model_versions_served"] == {"1": len(scenario.july)}


def test_drift_scores_are_the_distances_of_the_logged_values(july_run: Run, scenario: Scenario) -> None:
    scores = per_feature(july_run.outcome)
    for name in ("temp", "hum"):
        expected = normed_wasserstein(scenario.reference[name], scenario.july[name])
        assert scores[name]["score"] == pytest.approx(expected, rel=1e-9)
    expected = normed_wasserstein(scenario.reference["prediction"], scenario.july["prediction"])
    assert july_run.outcome["prediction_drift"]["score"] == pytest.approx(expected, rel=1e-9)


def test_more_january_february_traffic_is_not_drift(odd_run: Run, scenario: Scenario, params: Params) -> None:
    outcome, monitor = odd_run.outcome, params.monitor
    assert odd_run.code == 0
    assert outcome["verdict"] == "no drift"
    assert outcome["reasons"] == []
    assert outcome["input_drift"]["share"] < monitor.drift_share
    assert not outcome["input_drift"]["detected"]
    prediction = outcome["prediction_drift"]
    assert prediction["score"] < monitor.prediction_threshold
    assert prediction["score"] == pytest.approx(
        normed_wasserstein(scenario.reference["prediction"], scenario.odd["prediction"]), rel=1e-9
    )
    assert outcome["rows"]["in_window"] == len(scenario.odd)


def test_quality_counts_values_the_model_never_saw(july_run: Run, odd_run: Run, scenario: Scenario) -> None:
    july = {row["feature"]: row for row in july_run.outcome["quality"]}
    top = np.float32(scenario.reference["temp"].max())
    assert july["temp"]["outside_training"] == int((scenario.july["temp"].to_numpy(np.float32) > top).sum()) > 0
    assert july["month"]["outside_training"] == len(scenario.july)
    assert "unseen: 7" in july["month"]["detail"]
    assert all(row["missing"] == 0 for row in july.values())
    odd = {row["feature"]: row for row in odd_run.outcome["quality"]}
    assert odd["month"]["outside_training"] == odd["season"]["outside_training"] == 0


def test_the_summary_has_the_verdict_and_a_row_per_feature(july_run: Run, odd_run: Run) -> None:
    summary = (july_run.directory / "summary.md").read_text()
    first = summary.splitlines()[0]
    assert first.startswith("## Drift: production: **DRIFT**")
    for row in july_run.outcome["input_drift"]["per_feature"]:
        verdict = "**yes**" if row["drifted"] else "no"
        assert re.search(
            rf"^\| {row['feature']} \| .* \| {row['score']:.3f} \| .* \| {re.escape(verdict)} \|$", summary, re.M
        )
    assert "### Prediction drift" in summary
    assert "### Data quality" in summary
    novel = re.search(r"^(.*) had values the model never saw in training\.$", summary, re.M)
    assert novel
    assert {"season", "month", "temp", "atemp"} <= set(novel.group(1).split(", "))
    assert "model (version unknown)" in summary  # no gate record in this project: it does not invent one
    assert "data janfeb-even.dir" in summary  # the reference is the split the model metadata describes
    assert (odd_run.directory / "summary.md").read_text().splitlines()[0] == "## Drift: production: no drift"
    assert {path.name for path in july_run.directory.iterdir()} == {"report.html", "drift.json", "summary.md"}


# --- labels --------------------------------------------------------------------------------------------------


def judge_labels(scenario: Scenario, labelled: pd.DataFrame, sink: str) -> tuple[int, dict[str, Any]]:
    """Run the drift job on `sink` with the labels of `labelled` where `forkcast replay` puts them."""
    labels_file = scenario.project / "outputs" / "labels" / "staging.parquet"
    labels_file.parent.mkdir(parents=True, exist_ok=True)
    labelled[["request_id", "position", "actual"]].to_parquet(labels_file, index=False)
    try:
        return run_drift(scenario.project, "--env", "staging", "--sink", str(scenario.sinks[sink]), "--until", UNTIL)
    finally:
        labels_file.unlink()


def expected_performance(scenario: Scenario, labelled: pd.DataFrame, params: Params) -> tuple[float, float, float]:
    """The model's RMSE and bias on the labelled rows, and the seasonal baseline's RMSE, computed here."""
    predicted = labelled["prediction"].to_numpy(np.float32).astype(np.float64)  # as logged
    actual = labelled["actual"].to_numpy(np.float64)
    keys = list(params.dataset.seasonal_keys)
    baseline = seasonal_baseline(scenario.reference, params.dataset.target, labelled, keys).to_numpy(np.float64)
    rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
    return rmse, float(np.mean(predicted - actual) / np.mean(actual)), float(np.sqrt(np.mean((baseline - actual) ** 2)))


def test_labels_judge_the_error_against_the_baseline_on_the_same_rows_and_the_bias(
    scenario: Scenario, params: Params
) -> None:
    """A January-February model serving July: its error against the naive baseline's on the same July rows, and
    its bias (it predicts winter levels), whatever its own test error was."""
    labelled = scenario.july.head(600)  # labels arrive late: only some of the window is known
    code, outcome = judge_labels(scenario, labelled, "july")
    performance = outcome["performance"]
    rmse, bias, baseline_rmse = expected_performance(scenario, labelled, params)
    assert code == 1
    assert outcome["environment"] == "staging"
    assert performance["labelled_rows"] == 600
    assert performance["rmse"] == pytest.approx(rmse)
    assert performance["bias"] == pytest.approx(bias)
    assert performance["baseline_rmse"] == pytest.approx(baseline_rmse)
    assert performance["allowed_rmse"] == pytest.approx(baseline_rmse * (1 + params.monitor.max_error_vs_baseline))
    assert performance["judged"]
    assert bias < -params.monitor.max_bias  # July rides far above what winter taught it
    assert performance["biased"]
    assert performance["worse_than_baseline"] is (rmse > performance["allowed_rmse"])
    assert any(reason.startswith("bias -") and "systematically low" in reason for reason in outcome["reasons"])
    summary = (scenario.project / "outputs" / "drift" / "staging" / "summary.md").read_text()
    assert "### Performance on labelled records: **" in summary
    assert "BIASED**" in summary
    assert f"| the model | {figure(rmse)} |" in summary
    assert f"| the naive seasonal baseline | {figure(baseline_rmse)} |" in summary


def test_labels_of_traffic_like_the_training_data_are_no_drift(scenario: Scenario, params: Params) -> None:
    """The odd January-February days: judged, better than the baseline, unbiased."""
    labelled = scenario.odd.head(24 * 10)
    _, outcome = judge_labels(scenario, labelled, "odd")
    performance = outcome["performance"]
    rmse, bias, baseline_rmse = expected_performance(scenario, labelled, params)
    assert performance["judged"]
    assert rmse < baseline_rmse
    assert abs(bias) < params.monitor.max_bias
    assert not performance["worse_than_baseline"]
    assert not performance["biased"]
    assert not any("labelled" in reason or "bias" in reason for reason in outcome["reasons"])


def test_a_labels_file_without_the_columns_is_a_usage_error(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels_file = tmp_path / "labels.csv"
    scenario.july.head(10).rename(columns={"position": "pos", "actual": "y"})[["request_id", "pos", "y"]].to_csv(
        labels_file, index=False
    )
    code, _ = run_drift(scenario.project, "--sink", str(scenario.sinks["july"]), "--labels", str(labels_file))
    assert code == 2
    error = capsys.readouterr().err
    assert "lacks the column(s) position, actual" in error
    assert "request_id, pos, y" in error


# --- no production data yet, and usage errors ---------------------------------------------------------------


def test_no_log_yet_is_no_production_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # No pipeline outputs here, not even a reference: reporting "no data" must not need one.
    bare_project(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setenv("FORKCAST_INFERENCE_LOG", str(tmp_path / "logs"))
        code = main(["drift", "--env", "production"])
    out = capsys.readouterr().out
    directory = tmp_path / "outputs" / "drift" / "production"
    outcome = json.loads((directory / "drift.json").read_text())
    assert code == 3
    assert out.startswith("no production data yet: no records in the inference log")
    assert str(tmp_path / "logs" / "production") in out  # the default sink, as `forkcast deploy` computes it
    assert "forkcast replay" in out
    assert "forkcast deploy --env production" in out
    assert outcome["verdict"] == "no production data yet"
    assert outcome["exit_code"] == 3
    assert outcome["input_drift"] is None
    assert outcome["report_html"] is None
    assert not (directory / "report.html").exists()
    summary = (directory / "summary.md").read_text()
    assert "**No production data yet**" in summary
    assert "no drift is claimed" in summary
    assert "DRIFT" not in summary


def test_only_smoke_traffic_is_no_production_data(scenario: Scenario) -> None:
    code, outcome = run_drift(scenario.project, "--sink", str(scenario.sinks["smoke-only"]), "--until", UNTIL)
    assert code == 3
    assert outcome["rows"] == {"in_window": 0, "smoke_dropped": scenario.smoke_rows, "compared": 0, "sampled": False}
    assert f"({scenario.smoke_rows:,} smoke-test and probe rows dropped)" in outcome["reasons"][0]


def test_the_window_ends_before_until(scenario: Scenario) -> None:
    # The first request was logged at exactly 2026-03-01T00:00Z: a window up to that instant excludes it.
    code, outcome = run_drift(scenario.project, "--sink", str(scenario.sinks["odd"]), "--until", DAY.isoformat())
    assert code == 3
    assert outcome["window"] == {"since": "2026-02-28T00:00:00+00:00", "until": "2026-03-01T00:00:00+00:00", "days": 1}


def test_a_large_window_is_sampled_but_counted_whole(scenario: Scenario, tmp_path: Path) -> None:
    settings = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings["monitor"]["max_rows"] = 1_000
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(settings))
    shutil.copy(ROOT / "dataset.yaml", tmp_path)  # the declaration is read from beside the params file
    sink = str(scenario.sinks["july"])
    code, outcome = run_drift(
        scenario.project, "--sink", sink, "--until", UNTIL, "--window-days", "5", "--params", str(params_file)
    )
    rows = outcome["rows"]
    assert code == 1
    assert outcome["window"]["days"] == 5
    assert rows["in_window"] == len(scenario.july) + len(scenario.odd)  # July and the older Jan-Feb traffic
    assert (rows["compared"], rows["sampled"], rows["sample_seed"]) == (1_000, True, traffic.SAMPLE_SEED)
    quality = {row["feature"]: row for row in outcome["quality"]}
    assert quality["month"]["outside_training"] == len(scenario.july)  # counted on every row, not the sample
    summary = (scenario.project / "outputs" / "drift" / "production" / "summary.md").read_text()
    assert "compared a seeded uniform sample of 1,000 (monitor.max_rows)" in summary


def test_the_sample_is_uniform_seeded_and_without_repeats() -> None:
    table = pa.table({"n": pa.array(np.arange(100_000))})
    first, sampled = traffic.sample(table, 10_000)
    again, _ = traffic.sample(table, 10_000)
    values = first["n"].to_numpy()
    assert sampled
    assert first.equals(again)
    assert len(np.unique(values)) == 10_000
    assert np.all(np.diff(values) > 0)
    assert np.histogram(values, bins=10, range=(0, 100_000))[0].min() > 900  # spread over the whole window
    whole, sampled = traffic.sample(table, 100_000)
    assert whole is table
    assert not sampled


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "yesterday"], "is not an ISO date or time"),
        (["--env", "prod"], "--env must be one of staging, production"),
    ],
)
def test_bad_options_are_usage_errors(
    scenario: Scenario, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_drift(scenario.project, "--sink", str(scenario.sinks["odd"]), *args)
    assert code == 2
    assert message in capsys.readouterr().err


def test_traffic_without_a_reference_says_to_run_the_pipeline(
    scenario: Scenario, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run_drift(bare_project(tmp_path), "--sink", str(scenario.sinks["odd"]), "--until", UNTIL)
    assert code == 2
    assert "dvc repro" in capsys.readouterr().err


# --- atomic outputs ------------------------------------------------------------------------------------------


def test_a_failure_half_way_leaves_the_previous_report(
    scenario: Scenario, odd_run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from evidently.core.report import Snapshot

    drift_dir = scenario.project / "outputs" / "drift"
    target = drift_dir / "production"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(odd_run.directory, target)  # the previous night's report
    before = {path.name: path.read_bytes() for path in target.iterdir()}

    def disk_full(self: Any, filename: Any) -> None:
        Path(filename).write_text("<html>half a rep")  # a partial write, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Snapshot, "save_html", disk_full)
    code, _ = run_drift(scenario.project, "--sink", str(scenario.sinks["july"]), "--until", UNTIL)
    assert code == 4  # the job failed: not 1, which the nightly workflow would take for drift
    error = capsys.readouterr().err
    assert "the drift job failed: OSError" in error
    assert "No space left on device" in error
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert not [path.name for path in drift_dir.iterdir() if path.name.startswith(".")]  # no temporary directory


# --- the reference of a deployed model ------------------------------------------------------------------------


@pytest.fixture
def deployed(scenario: Scenario, built: Built) -> Iterator[Path]:
    """A local production deployment record of the session's bento (no server needed to read what it serves)."""
    record = scenario.project / deploy.record_path("production")
    record.parent.mkdir(parents=True, exist_ok=True)
    deployment = deploy.Deployment(
        environment="production",
        bento=built.tag,
        model="",
        port=3102,
        pid=0,
        url="http://127.0.0.1:3102",
        inference_log=str(scenario.sinks["odd"]),
        server_log="outputs/deploy/production.log",
        started_at="2026-03-01T00:00:00+00:00",
    )
    record.write_text(json.dumps(asdict(deployment)))
    yield record
    record.unlink()


@pytest.mark.slow
def test_the_reference_predictions_come_from_the_deployed_model(
    scenario: Scenario, built: Built, deployed: Path, trained: TrainedModel
) -> None:
    code, outcome = run_drift(scenario.project, "--sink", str(scenario.sinks["odd"]), "--until", UNTIL)
    model = outcome["reference"]["model"]
    assert code in {0, 1}
    assert model["bento"] == built.tag
    assert model["model_version"] == built.lineage["model_version"]
    assert model["data_hash"] == built.lineage["data_hash"]
    # The bento's model (the whole year's), not the project's Jan-Feb model, predicted the reference.
    expected = np.clip(trained.pipeline.predict(scenario.reference[list(INPUTS.names)]), 0.0, None).mean()
    assert outcome["prediction_drift"]["reference_mean"] == pytest.approx(float(expected))
    assert any("was trained on data" in warning for warning in outcome["warnings"])  # not its training data
    assert any("served by model version(s) 1" in warning for warning in outcome["warnings"])


# --- the HTML report, as a browser shows it -------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
    ]
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the decompressed scanlines of a PNG (no imaging library needed)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        if data[offset + 4 : offset + 8] == b"IDAT":
            chunks.append(data[offset + 8 : offset + 8 + length])
        offset += 12 + length
    return width, height, zlib.decompress(b"".join(chunks))


@pytest.mark.slow
@pytest.mark.integration
def test_the_html_report_renders_the_drift_verdict(july_run: Run, params: Params, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI must install it (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI runs this test")
    report = july_run.directory / "report.html"
    dumped = chromium(tmp_path / "profile", "--dump-dom", report.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    rendered = re.sub(r"<script\b.*?</script>", "", dumped.stdout, flags=re.S)  # what the page shows, not its data
    inputs = july_run.outcome["input_drift"]
    assert f"Dataset Drift is detected. Dataset drift detection threshold is {params.monitor.drift_share}" in rendered
    assert (
        f"Drift is detected for {round(inputs['share'] * 100, 3)}% of columns "
        f"({inputs['drifted_features']} out of {inputs['features']})."
    ) in rendered

    screenshot = tmp_path / "report.png"
    shot = chromium(tmp_path / "profile", "--window-size=1280,900", f"--screenshot={screenshot}", report.as_uri())
    assert shot.returncode == 0, shot.stderr[-2000:]
    width, height, pixels = png_pixels(screenshot)
    assert (width, height) == (1280, 900)
    assert screenshot.stat().st_size > 20_000
    assert len(set(pixels)) > 64  # text and charts, not a blank page


# --- the template: another dataset, its own columns and kinds ----------------------------------------------------


def test_too_few_labels_are_reported_not_judged_in_natural_cycles(scenario: Scenario) -> None:
    _, outcome = judge_labels(scenario, scenario.july.head(100), "july")  # fewer than 7 days of hours
    performance = outcome["performance"]
    assert not performance["judged"]
    assert performance["needed_rows"] == 7 * 24
    assert "100 labelled hours, fewer than monitor.min_labelled_cycles (7 days of 24: 168)" in performance["judgement"]


@pytest.mark.parametrize("example", ["electricity"], indirect=True)
def test_the_drift_job_follows_the_declaration_of_another_dataset(
    data_file: Path, params: Params, tmp_path: Path
) -> None:
    """Half-hourly electricity demand: its features, their kinds and its unit come from its dataset.yaml."""
    dataset = params.dataset
    inputs = dataset.inputs()
    features = build_features(load_raw(data_file, dataset), dataset)
    reference = features[features["timestamp"] < "2014-03-01"].reset_index(drop=True)
    winter = features[features["timestamp"].dt.month == 7].reset_index(drop=True)
    pipeline = fit(params.train, reference, inputs)
    reference, winter = (
        frame.assign(prediction=predict(pipeline, frame, inputs.target).to_numpy()) for frame in (reference, winter)
    )
    (tmp_path / "project").mkdir()
    project = bare_project(tmp_path / "project", EXAMPLES["electricity"].declaration)
    write_model(project, pipeline, reference, inputs, winter["prediction"] - winter[dataset.target])
    sink = tmp_path / "log"
    cycle = dataset.time.frequency.rows_per_cycle
    log_requests(sink, winter.rename(columns={dataset.target: "actual"}), DAY, "july-", inputs, cycle)
    code, outcome = run_drift(project, "--sink", str(sink), "--until", UNTIL)
    assert code == 1  # a summer model sees July, winter in Melbourne, as drift
    methods = {row["feature"]: row["method"] for row in outcome["input_drift"]["per_feature"]}
    assert methods == {
        "WorkDay": "jensenshannon", "Temperature": "wasserstein", "minute_of_day": "jensenshannon",
        "weekday": "jensenshannon", "month": "jensenshannon",
    }  # fmt: skip
    assert outcome["kinds"] == dataset.drift_kinds()
    assert outcome["unit"] == "GW"
    quality = {row["feature"]: row for row in outcome["quality"]}
    assert quality["month"]["outside_training"] == len(winter)  # July: a month the model never saw
    assert quality["Temperature"]["detail"].startswith("training range")
    assert outcome["rows"]["in_window"] == len(winter)
