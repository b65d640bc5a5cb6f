import json
import os
import stat
from pathlib import Path

import pytest

from forkcast import atomic, paths
from forkcast.summary import pipeline_summary, versus_baseline

from .conftest import EXAMPLES, Example


def test_the_baseline_comparison_says_worse_when_it_is() -> None:
    assert versus_baseline(0.153) == "15.3% better than the baseline"
    assert versus_baseline(-0.532) == "53.2% WORSE than the baseline"


def test_the_summary_flags_figures_older_than_a_failed_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    summary = {"rows": 10, "checks": 65, "checks_passed": 64, "share_of_checks_passed": 64 / 65,
               "share_of_rows_passed": 0.9}  # fmt: skip
    atomic.write_json(paths.VALIDATION_JSON, {"passed": False, "summary": summary})
    metrics = {"rmse": 50.0, "mae": 30.0, "r2": 0.8}
    atomic.write_json(
        paths.METRICS_JSON,
        {"test_rows": 5, "model": metrics, "baseline": metrics, "rmse_improvement_over_baseline": 0.0},
    )
    text = pipeline_summary()
    assert "data validation   FAILED: 64/65 checks" in text
    assert "come from the last run that got past it" in text
    assert "quality gate      not run yet" in text


def test_atomic_writes_make_ordinary_files_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out" / "file.json"
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("old")

    def explode(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.write_atomic(target, explode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_the_summary_flags_a_gate_older_than_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    verdict = {"reason": "no model has the alias 'production' yet"}
    atomic.write_json(
        paths.GATE_JSON,
        {"eligible": True, "verdict": verdict, "model_name": "m", "version": "1", "run_id": "r", "tracking_uri": "u"},
    )
    metrics = {"rmse": 50.0, "mae": 30.0, "r2": 0.8}
    atomic.write_json(
        paths.METRICS_JSON,
        {"test_rows": 5, "model": metrics, "baseline": metrics, "rmse_improvement_over_baseline": 0.0},
    )
    os.utime(paths.GATE_JSON, (1, 1))  # the gate predates the metrics
    assert "the gate below judged an earlier model" in pipeline_summary()
    os.utime(paths.GATE_JSON)
    assert "earlier model" not in pipeline_summary()


def test_the_summary_says_what_runs_where_and_whether_its_smoke_tests_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forkcast.serving import deploy

    monkeypatch.chdir(tmp_path)
    staging = deploy.Deployment(
        environment="staging", bento="forkcast:v4-abc", model="forkcast-demand:v4-abc", port=3101, pid=1,
        url="http://127.0.0.1:3101", inference_log="log", server_log="log", started_at="now",
        smoke={"passed": True, "bento": "forkcast:v3-old", "report": "outputs/smoke/staging/report.json"},
    )  # fmt: skip
    deploy.save(staging)
    text = pipeline_summary()
    # The smoke pass belongs to the previous bento: it does not count for the one running now.
    assert "staging           forkcast:v4-abc at http://127.0.0.1:3101, smoke tests not run\n" in text
    assert "production        not deployed" in text
    deploy.record_smoke("staging", False, Path("outputs/smoke/staging/report.json"))
    assert "smoke tests FAILED  -> outputs/smoke/staging/report.md" in pipeline_summary()
    deploy.record_smoke("staging", True, Path("outputs/smoke/staging/report.json"))
    assert "smoke tests passed  -> outputs/smoke/staging/report.md" in pipeline_summary()


def test_the_summary_ends_with_each_environments_drift_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    atomic.write_json(paths.PREPARED_INPUTS, EXAMPLES["bikes"].dataset.inputs().model_dump(mode="json"))
    drifted = {"verdict": "drift", "reasons": ["input drift: 6 of 11 features drifted"], "rows": {"in_window": 741}}
    quiet = {"verdict": "no production data yet", "reasons": ["no records"], "rows": {"in_window": 0}}
    atomic.write_json(paths.OUTPUTS / "drift" / "production" / "drift.json", drifted)
    atomic.write_json(paths.OUTPUTS / "drift" / "staging" / "drift.json", quiet)
    lines = pipeline_summary().splitlines()
    assert (
        "drift (production) 741 logged hours: DRIFT: input drift: 6 of 11 features drifted  -> "
        "outputs/drift/production/report.html"
    ) in lines
    assert "drift (staging) no production data yet  -> outputs/drift/staging/summary.md" in lines


@pytest.mark.datasets
def test_the_summary_speaks_in_the_datasets_periods_and_unit(
    example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    inputs = example.dataset.inputs()
    atomic.write_json(paths.PREPARED_INPUTS, inputs.model_dump(mode="json"))
    metrics = {"rmse": 0.3951, "mae": 0.3131, "r2": 0.663}
    baseline = {"rmse": 0.5511, "mae": 0.4421, "r2": 0.344}
    atomic.write_json(
        paths.METRICS_JSON,
        {"test_rows": 2_640, "model": metrics, "baseline": baseline, "rmse_improvement_over_baseline": 0.283},
    )
    text = pipeline_summary()
    assert f"test set (2,640 {inputs.frequency.periods})" in text
    assert f"in {inputs.target.unit}" in text
    assert "0.395" in text  # a figure at its own scale, not 0.4
    assert "28.3% better than the baseline" in text
