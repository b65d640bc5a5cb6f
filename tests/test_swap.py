"""A template, not a bike app: swap in another real dataset on a fresh clone and run the whole local line on it.

The swap is README "Make it yours", step by step, with the electricity example: its data under data/ (and the
feed), its declaration over dataset.yaml, `dvc add`, `dvc push`. Git then sees at most three changed files
besides the objects the DVC remote stores; no code, no test, no workflow is edited. Then the line runs as
`make run` runs it: dvc repro, build, staging and its smoke tests, production and its smoke tests, replayed
traffic, the drift report.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from forkcast.data.declaration import load
from forkcast.serving import inference_log

from .conftest import ELECTRICITY, run, run_ok, with_ports

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DATA = "victoria_electricity_2014_halfhourly.csv"


def swap_in_electricity(project: Path) -> list[str]:
    """README "Make it yours" on `project`; the files git sees changed, besides the DVC remote's objects."""
    example = "examples/electricity"
    run_ok(["dvc", "pull", "-q", f"{example}/{DATA}.dvc"], project)
    for directory in ("data", "feed"):
        for old in (project / directory).iterdir():
            old.unlink()
        shutil.copy(project / example / DATA, project / directory / DATA)
    shutil.copy(project / example / "dataset.yaml", project / "dataset.yaml")
    run_ok(["dvc", "add", "-q", "data", "feed"], project)
    run_ok(["dvc", "push", "-q", "data.dvc", "feed.dvc"], project)
    run_ok(["git", "add", "-A"], project)
    changed = run_ok(["git", "diff", "--cached", "--name-only"], project).stdout.split()
    run_ok(["git", "commit", "-q", "-m", "Electricity demand instead of bike rentals"], project)
    return [name for name in changed if not name.startswith(".dvc/storage/")]


def timed(times: dict[str, float], name: str, args: list[str], project: Path) -> str:
    started = time.perf_counter()
    result = run_ok(args, project)
    times[name] = round(time.perf_counter() - started, 1)
    return result.stdout


def test_another_dataset_runs_the_whole_line_after_a_three_file_swap(project: Path) -> None:
    changed = swap_in_electricity(project)
    assert sorted(changed) == ["data.dvc", "dataset.yaml", "feed.dvc"]
    dataset = load(project / "dataset.yaml")

    with_ports(project)  # test plumbing: free ports for the two local services
    times: dict[str, float] = {}
    repro = timed(times, "dvc repro", ["dvc", "repro"], project)
    for stage in ("validate", "prepare", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in repro
    assert "21/21 checks passed" in repro
    assert "test set, 2,640 half-hours" in repro
    metrics = json.loads((project / "outputs/evaluation/metrics.json").read_text())
    assert metrics["model"]["rmse"] < 0.9 * metrics["baseline"]["rmse"]  # it beats the seasonal baseline clearly
    assert json.loads((project / "outputs/validation/report.json").read_text())["time"]["missing_periods"] == 0

    try:
        build = timed(times, "build", ["forkcast", "build"], project)
        tag = json.loads((project / "outputs/build/build.json").read_text())["bento"]
        assert f"{tag} built (model version 1" in build
        timed(times, "deploy staging", ["forkcast", "deploy", "--env", "staging"], project)
        smoke = timed(times, "smoke staging", ["forkcast", "smoke", "--env", "staging"], project)
        assert "FAIL" not in smoke
        assert "6 bad requests answered 400" in smoke  # derived from the contract: WorkDay, Demand...
        timed(times, "deploy production", ["forkcast", "deploy", "--env", "production", "--approve"], project)
        timed(times, "smoke production", ["forkcast", "smoke", "--env", "production"], project)

        metadata = httpx.post(f"{_url(project, 'production')}/metadata", json={}, timeout=10).json()
        assert (metadata["dataset"], metadata["target"], metadata["unit"]) == ("electricity demand", "Demand", "GW")
        assert metadata["features"] == ["WorkDay", "Temperature", "minute_of_day", "weekday", "month"]

        replay = timed(times, "replay", ["forkcast", "replay", "--env", "production"], project)
        assert re.search(r"replayed 2,640 half-hours in 55 requests", replay)  # its test period, a day per request

        started = time.perf_counter()
        drift = run(["forkcast", "drift", "--env", "production"], project)
        times["drift"] = round(time.perf_counter() - started, 1)
        assert drift.returncode in {0, 1}, drift.stderr  # a verdict, whichever it is
        outcome = json.loads((project / "outputs/drift/production/drift.json").read_text())
        assert outcome["rows"]["in_window"] == 2_640
        assert [row["feature"] for row in outcome["input_drift"]["per_feature"]] == list(dataset.feature_names)
        assert (project / "outputs/drift/production/report.html").stat().st_size > 100_000

        summary = run_ok(["forkcast", "summary"], project).stdout
        assert "test set (2,640 half-hours)" in summary
        assert "in GW" in summary
        assert "drift (production) 2,640 logged half-hours:" in summary
    finally:
        run(["forkcast", "undeploy"], project)

    schema = inference_log.log_schema(dataset.inputs())
    logged = inference_log.read(str(project / "outputs/inference/production"), schema=schema).to_pandas()
    replayed = logged[logged["request_id"].str.startswith("replay-")]
    assert len(replayed) == 2_640
    assert replayed["WorkDay"].isin([0, 1]).all()
    assert replayed["minute_of_day"].max() == 23 * 60 + 30
    print(json.dumps({"electricity": times}))  # the stages' times, for the record


def _url(project: Path, environment: str) -> str:
    record = json.loads((project / "outputs" / "deploy" / f"{environment}.json").read_text())
    return str(record["url"])


def test_the_electricity_example_is_in_the_repository(project: Path) -> None:
    """What the swap needs ships with the template: the declaration, and the data in the project's DVC remote."""
    assert (ELECTRICITY / "dataset.yaml").exists()
    assert (project / "examples/electricity/dataset.yaml").read_text() == (ELECTRICITY / "dataset.yaml").read_text()
    run_ok(["dvc", "pull", "-q", f"examples/electricity/{DATA}.dvc"], project)
    assert (project / "examples/electricity" / DATA).stat().st_size > 500_000


def test_a_production_model_of_the_old_data_does_not_stop_the_new_one(project: Path) -> None:
    """Bikes in production, then the electricity data: the gate says production cannot score it, not a traceback."""
    run_ok(["dvc", "repro", "-q"], project)
    run_ok(["forkcast", "promote", "1"], project)
    run_ok(["git", "add", "-A"], project)
    run_ok(["git", "commit", "-q", "-m", "bikes in production"], project)
    swap_in_electricity(project)
    run_ok(["dvc", "repro", "-q"], project)
    gate = json.loads((project / "outputs/registry/gate.json").read_text())
    assert gate["eligible"]
    assert gate["version"] == "2"
    (note,) = gate["verdict"]["notes"]
    assert note.startswith("production v1 was trained on inputs the data no longer has (season, hr,")
    assert [c["against"] for c in gate["verdict"]["comparisons"]] == ["the seasonal baseline"]
