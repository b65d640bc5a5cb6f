"""End to end: `dvc repro` on a fresh clone, bad data stopping the line, new data, diffs between commits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import run, run_ok
from .test_cli import break_data

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STAGES = ["validate", "prepare", "train", "evaluate", "backtest", "refit", "register"]
DOWNSTREAM = [
    "outputs/prepared/train.parquet", "outputs/model/model.joblib", "outputs/model/model.onnx",
    "outputs/model/metadata.json", "outputs/evaluation/metrics.json", "outputs/evaluation/backtest.json",
    "outputs/served/model.joblib", "outputs/served/metadata.json", "outputs/registry/gate.json",
]  # fmt: skip


def snapshot(project: Path) -> dict[str, bytes]:
    return {name: (project / name).read_bytes() for name in DOWNSTREAM}


def commit(project: Path, message: str) -> None:
    run_ok(["git", "add", "-A"], project)
    run_ok(["git", "commit", "-q", "-m", message], project)


def test_fresh_clone_runs_everything_then_is_up_to_date_then_stops_on_bad_data(project: Path) -> None:
    first = run_ok(["dvc", "repro"], project)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first.stdout
    gate = json.loads((project / "outputs/registry/gate.json").read_text())
    assert gate["eligible"]
    assert gate["version"] == "1"
    assert gate["tracking_uri"].startswith("sqlite:///")
    assert (project / ".mlflow/mlflow.db").exists()
    assert not (project / "mlruns").exists()

    # Lineage: the data hash and the commit the model was trained from.
    metadata = json.loads((project / "outputs/served/metadata.json").read_text())
    data_dvc = yaml.safe_load((project / "data.dvc").read_text())
    assert metadata["data_hash"] == data_dvc["outs"][0]["md5"]
    head = run_ok(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert metadata["git_commit"] == head

    # The MLflow run carries the same lineage, and a hash of each stage recorded in dvc.lock.
    from mlflow import MlflowClient

    from forkcast.model.lineage import stage_hashes

    client = MlflowClient(gate["tracking_uri"])
    tags = client.get_run(gate["run_id"]).data.tags
    assert tags["data_hash"] == metadata["data_hash"]
    assert tags["git_commit"] == head
    lock = stage_hashes(project / "dvc.lock")
    assert {"validate", "prepare", "train", "evaluate"} <= set(lock)
    assert all(tags[f"dvc_stage.{stage}"] == digest for stage, digest in lock.items() if stage != "register")

    summary = run_ok(["forkcast", "summary"], project).stdout
    assert "data validation   passed" in summary
    assert "ELIGIBLE for promotion" in summary
    assert "forkcast-demand v1" in summary

    second = run_ok(["dvc", "repro"], project)
    assert "Data and pipelines are up to date." in second.stdout
    for stage in STAGES:
        assert f"Running stage '{stage}'" not in second.stdout

    before = snapshot(project)
    good_data = (project / "data/bikeshare_hourly.csv").read_bytes()
    break_data(project, "unknown weather")
    broken = run(["dvc", "repro"], project)
    assert broken.returncode != 0
    assert "FAILED weathersit.isin" in broken.stderr
    assert "Running stage 'prepare'" not in broken.stdout
    assert "sandstorm" in (project / "outputs/validation/report.md").read_text()
    assert snapshot(project) == before  # nothing downstream was touched

    # The README's way back: `dvc repro` recorded the bad data in data.dvc; git has the last good one.
    assert run_ok(["git", "status", "--porcelain", "data.dvc"], project).stdout.strip() == "M data.dvc"
    run_ok(["git", "checkout", "data.dvc"], project)
    run_ok(["dvc", "checkout", "data.dvc"], project)
    assert (project / "data/bikeshare_hourly.csv").read_bytes() == good_data
    again = run_ok(["dvc", "repro"], project)
    assert "Running stage 'validate'" in again.stdout  # the report of the good data is written again
    assert "Running stage 'train'" not in again.stdout  # and nothing else needed to run


def test_dvc_finds_forkcast_without_the_environment_activated(project: Path) -> None:
    """`.venv/bin/dvc repro` from a plain shell: the stages' bin/forkcast finds the project's environment."""
    (project / ".venv").symlink_to(sys.prefix)  # where `make install` puts it
    plain = {"PATH": "/usr/bin:/bin"}  # no environment on PATH
    assert run(["sh", "-c", "command -v forkcast"], project, **plain).returncode != 0
    result = run([str(Path(sys.prefix) / "bin" / "dvc"), "repro", "validate"], project, **plain)
    assert result.returncode == 0, result.stderr
    assert "checks passed" in result.stdout


def test_a_change_to_the_declaration_reruns_only_the_stages_it_affects(project: Path) -> None:
    run_ok(["dvc", "repro"], project)
    declaration = project / "dataset.yaml"
    text = declaration.read_text()
    # How drift compares a feature changes no model: validate and prepare run again, their outputs do not change.
    declaration.write_text(
        text.replace(
            "min: 0, max: 1, description: normalised humidity",
            "min: 0, max: 1, drift: discrete, description: normalised humidity",
        )
    )
    rerun = run_ok(["dvc", "repro"], project).stdout
    assert "Running stage 'validate'" in rerun
    for stage in ("train", "evaluate", "backtest", "refit", "register"):
        assert f"Running stage '{stage}'" not in rerun
    # The baseline's keys change the evaluation and the backtest (and what register records), not the model.
    declaration.write_text(text.replace("seasonal_keys: [workingday, hr]", "seasonal_keys: [hr]"))
    rerun = run_ok(["dvc", "repro"], project).stdout
    assert "Running stage 'evaluate'" in rerun
    assert "Running stage 'backtest'" in rerun
    assert "Running stage 'train'" not in rerun
    assert "Running stage 'refit'" not in rerun


def test_new_data_and_new_params_show_up_in_dvc_diffs(project: Path) -> None:
    run_ok(["forkcast", "new-data", "--through", "2011-06"], project)
    run_ok(["dvc", "add", "data"], project)
    run_ok(["dvc", "repro"], project)
    commit(project, "data through June")

    # A month of new data arrives: data.dvc changes the way a real data push changes it.
    old_hash = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    run_ok(["forkcast", "new-data", "--next-month"], project)
    run_ok(["dvc", "add", "data"], project)
    new_hash = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert new_hash != old_hash
    status = run_ok(["dvc", "status"], project).stdout
    assert "validate" in status  # the pipeline knows it must rerun

    # A new idea in params.yaml.
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("max_iter: 100", "max_iter: 40"))
    repro = run_ok(["dvc", "repro"], project)
    assert "Running stage 'train'" in repro.stdout
    gate = json.loads((project / "outputs/registry/gate.json").read_text())
    assert gate["version"] == "2"  # no production alias yet: judged eligible as the first would be

    params_diff = run_ok(["dvc", "params", "diff", "--json"], project).stdout
    max_iter = json.loads(params_diff)["params.yaml"]["train.hist_gradient_boosting.max_iter"]
    assert (max_iter["old"], max_iter["new"]) == (100, 40)
    metrics_diff = json.loads(run_ok(["dvc", "metrics", "diff", "--json"], project).stdout)
    rmse = metrics_diff["outputs/evaluation/metrics.json"]["model.rmse"]
    assert rmse["old"] != rmse["new"]
    backtest = metrics_diff["outputs/evaluation/backtest.json"]["model.rmse.mean"]
    assert backtest["old"] != backtest["new"]
    rows = metrics_diff["outputs/validation/report.json"]["summary.rows"]
    assert rows["new"] > rows["old"]  # July arrived


def test_promoting_then_a_worse_model_is_refused_by_the_gate(project: Path) -> None:
    run_ok(["dvc", "repro"], project)
    run_ok(["forkcast", "promote", "1"], project)
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("max_iter: 100", "max_iter: 3"))
    run_ok(["dvc", "repro"], project)  # the gate reports; it does not break the pipeline
    gate = json.loads((project / "outputs/registry/gate.json").read_text())
    assert not gate["eligible"]
    failed = {c["against"] for c in gate["verdict"]["comparisons"] if not c["passed"]}
    assert failed == {"the seasonal baseline", "production v1"}
    summary = run_ok(["forkcast", "summary"], project).stdout
    assert "REJECTED" in summary
    assert "worse" in summary
    assert run(["forkcast", "promote", "99"], project).returncode == 2
    refused = run(["forkcast", "promote", "2"], project)
    assert refused.returncode == 1
    assert "not eligible for promotion (gate: rejected)" in refused.stderr
    run_ok(["forkcast", "promote", "2", "--force"], project)


def test_the_same_model_twice_is_one_version_and_one_bento_tag(project: Path) -> None:
    """A retrain to the same model (a forced rerun of every stage, another commit) registers nothing new, builds
    nothing new, and once it is production's, the gate says there is nothing to release."""
    run_ok(["dvc", "repro"], project)
    first = run_ok(["forkcast", "build"], project).stdout
    first_gate = json.loads((project / "outputs/registry/gate.json").read_text())
    run_ok(["forkcast", "promote", first_gate["version"]], project)
    commit(project, "another commit, the same model")

    run_ok(["dvc", "repro", "--force"], project)
    gate = json.loads((project / "outputs/registry/gate.json").read_text())
    assert gate["version"] == first_gate["version"]
    assert gate["run_id"] != first_gate["run_id"]  # a new run, recorded, that found the same model
    assert gate["verdict"]["unchanged"]
    assert run_ok(["forkcast", "job-summary", "--outputs"], project).stdout == "eligible=true\nunchanged=true\n"
    second = run_ok(["forkcast", "build"], project).stdout
    tag = json.loads((project / "outputs/build/build.json").read_text())["bento"]
    assert tag in first
    assert tag in second
    assert f"{tag} already built, reused" in second


def test_the_feed_month_by_month_keeps_beating_the_baseline_or_is_refused_with_the_reason(project: Path) -> None:
    """New months arrive as `make new-data` brings them; each candidate is judged on the newest weeks against the
    baseline and production's settings on the same folds, and the served model learned the new month."""
    run_ok(["forkcast", "new-data", "--through", "2011-09"], project)
    for month in ("2011-09", "2011-10", "2011-11"):
        if month != "2011-09":
            run_ok(["forkcast", "new-data", "--next-month"], project)
        run_ok(["dvc", "add", "-q", "data"], project)
        run_ok(["dvc", "repro", "-q"], project)
        gate = json.loads((project / "outputs/registry/gate.json").read_text())
        verdict = gate["verdict"]
        comparisons = {c["against"]: c for c in verdict["comparisons"]}
        assert comparisons["the seasonal baseline"]["folds"] == 8
        if gate["eligible"]:
            assert all(c["passed"] for c in comparisons.values())
            run_ok(["forkcast", "promote", gate["version"]], project)
        else:  # refused: the reason names the comparison that failed
            assert any(f"FAILS: rmse {c['candidate']:.4g} vs {c['against']}" in verdict["reason"]
                       for c in comparisons.values() if not c["passed"])  # fmt: skip
        if month != "2011-09":  # production is last month's release, with the same settings: the same folds' result
            (production,) = [c for name, c in comparisons.items() if name.startswith("production")]
            assert production["folds"] == 8
            assert production["reference"] == production["candidate"]
        served = json.loads((project / "outputs/served/metadata.json").read_text())
        assert served["fitted_on"]["end"].startswith(str(pd.Period(month, "M").end_time.date()))
        assert served["evaluated_model"]["fitted_on"]["end"] < served["fitted_on"]["end"]
