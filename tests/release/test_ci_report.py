"""What the pipeline workflow publishes: the job summary and the one pull-request comment."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from forkcast.cli import main
from forkcast.config import GateParams
from forkcast.data.declaration import load
from forkcast.model.backtest import summarise
from forkcast.model.gate import Scored, judge
from forkcast.release import ci_report

from ..conftest import ROOT, run_ok

VALIDATION = {
    "source": "data/bikeshare_hourly.csv",
    "passed": False,
    "summary": {
        "rows": 100,
        "checks": 3,
        "checks_passed": 2,
        "share_of_checks_passed": 2 / 3,
        "rows_passing_all_checks": 97,
        "share_of_rows_passed": 0.97,
    },
    "checks": [
        {"name": "hr.in_range", "description": "in_range(0, 23)", "passed": False, "pass_rate": 0.97,
         "min_pass_rate": 1.0, "failure_samples": [{"row": 4, "hr": 25}], "error": None},
        {"name": "weathersit.isin", "description": "isin(['Clear', ...])", "passed": False, "pass_rate": 0.99,
         "min_pass_rate": 1.0, "failure_samples": [{"row": 7, "weathersit": "a|b`c"}], "error": None},
        {"name": "temp.not_null", "description": "no missing values", "passed": True, "pass_rate": 1.0,
         "min_pass_rate": 1.0, "failure_samples": [], "error": None},
    ],
}  # fmt: skip
FOLDS = [
    {"fold": "2011-12-18..2011-12-24", "start": "2011-12-18T00:00:00", "end": "2011-12-25T00:00:00",
     "train_rows": 8300, "test_rows": 168, "model": {"rmse": 60.0, "mae": 40.0, "r2": 0.7},
     "baseline": {"rmse": 70.0, "mae": 50.0, "r2": 0.6}},
    {"fold": "2011-12-25..2011-12-31", "start": "2011-12-25T00:00:00", "end": "2012-01-01T00:00:00",
     "train_rows": 8468, "test_rows": 165, "model": {"rmse": 60.2, "mae": 41.0, "r2": 0.7},
     "baseline": {"rmse": 72.0, "mae": 52.0, "r2": 0.6}},
]  # fmt: skip
BACKTEST = {
    "folds": FOLDS,
    "model": summarise([fold["model"] for fold in FOLDS]),
    "baseline": summarise([fold["baseline"] for fold in FOLDS]),
    "rmse_improvement_over_baseline": 0.1592,
}
PRODUCTION = Scored((0, 1), (54.8, 54.8), "(its settings, hist_gradient_boosting, retrained on the same 2 folds)")
GATE = {
    "eligible": False,
    "model_name": "forkcast-demand",
    "version": "4",
    "run_id": "r4",
    "verdict": judge(GateParams(), "4", BACKTEST, production=("3", PRODUCTION)).to_dict(),
}
METRICS = {
    "test_rows": 1316,
    "model": {"rmse": 54.7793, "mae": 35.776, "r2": 0.7657},
    "baseline": {"rmse": 64.6923, "mae": 41.8164, "r2": 0.6732},
}


def write_outputs(root: Path, *, validation: dict | None = None, gate: dict | None = None) -> Path:
    outputs = root / "outputs"
    for name, data in (("validation/report.json", validation), ("registry/gate.json", gate)):
        if data is not None:
            (outputs / name).parent.mkdir(parents=True, exist_ok=True)
            (outputs / name).write_text(json.dumps(data))
    if validation is not None:
        (outputs / "validation" / "report.md").write_text("# Data validation\n")
    (outputs / "evaluation").mkdir(parents=True, exist_ok=True)
    (outputs / "evaluation" / "metrics.json").write_text(json.dumps(METRICS))
    (outputs / "evaluation" / "backtest.json").write_text(json.dumps(BACKTEST))
    return outputs


def test_a_failed_validation_shows_each_failed_check_with_samples(tmp_path: Path) -> None:
    summary = ci_report.job_summary(write_outputs(tmp_path, validation=VALIDATION))
    assert summary.startswith("## Forkcast pipeline: data validation failed")
    assert "| 100 | 2 / 3 | 66.7% | 97 (97.00%) |" in summary
    assert "`hr.in_range`" in summary
    assert "'hr': 25" in summary
    assert "| 100 | 2 / 3 |" in summary
    assert "temp.not_null" not in summary  # passing checks stay in the full report
    assert "Not run: the pipeline stopped before it. Nothing will be released." in summary
    table_rows = [line for line in summary.splitlines() if line.startswith("| `weathersit.isin`")]
    assert len(table_rows) == 1
    assert table_rows[0].count(" | ") == 4  # the value's | and ` cannot break the table
    assert "a\\|b'c" in table_rows[0]
    assert "Not computed: the pipeline stopped before evaluation" in summary  # no figures of an earlier run


def test_a_committed_report_without_this_runs_markdown_is_not_shown_as_this_runs_verdict(tmp_path: Path) -> None:
    outputs = write_outputs(tmp_path, validation=VALIDATION)
    (outputs / "validation" / "report.md").unlink()  # a fresh checkout: only the committed JSON
    summary = ci_report.job_summary(outputs)
    assert "Not run in this run" in summary
    assert "hr.in_range" not in summary


def test_a_rejected_model_says_why_and_that_nothing_is_released(tmp_path: Path) -> None:
    outputs = write_outputs(tmp_path, validation={**VALIDATION, "passed": True, "checks": []}, gate=GATE)
    summary = ci_report.job_summary(outputs)
    assert summary.startswith("## Forkcast pipeline: the quality gate rejected the model")
    assert "REJECTED: nothing will be released" in summary
    assert "| production v3 | 60.1 | 54.8 | 57.54 | 2 | **FAIL** | its settings, hist_gradient_boosting" in summary
    assert "| the seasonal baseline | 60.1 | 71 | 67.45 | 2 | pass |" in summary
    assert "### Test metrics (1,316 rows)" in summary  # no prepared inputs here: no unit or period to name
    assert "| model | 54.8 | 35.8 | 0.766 |" in summary
    assert "### Backtest: 2 folds, each trained on every earlier row" in summary
    assert "| 2011-12-25..2011-12-31 | 165 | 60.2 | 72.0 | 41.0 | 52.0 |" in summary
    assert "| mean ± std | | **60.1 ± 0.141** | **71.0 ± 1.41** |" in summary
    assert ci_report.gate_outputs(outputs) == "eligible=false\nunchanged=false\n"
    assert ci_report.gate_outputs(tmp_path / "nothing") is None


def test_production_s_own_model_again_is_eligible_but_not_released(tmp_path: Path) -> None:
    same = Scored((0, 1), (60.0, 60.2), "(its settings are the candidate's)")
    verdict = replace(judge(GateParams(), "3", BACKTEST, production=("3", same)), unchanged=True)
    gate = {**GATE, "eligible": True, "version": "3", "verdict": verdict.to_dict()}
    outputs = write_outputs(tmp_path, validation={**VALIDATION, "passed": True, "checks": []}, gate=gate)
    assert ci_report.job_summary(outputs).startswith("## Forkcast pipeline: the same model as production: nothing")
    assert ci_report.gate_outputs(outputs) == "eligible=true\nunchanged=true\n"


def test_the_gate_output_fails_when_the_pipeline_stopped_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_outputs(tmp_path, validation=VALIDATION)
    assert main(["job-summary", "--outputs"]) == 1
    assert "pipeline stopped before the register stage" in capsys.readouterr().err
    assert main(["job-summary"]) == 0
    assert "data validation failed" in capsys.readouterr().out


def test_the_comment_carries_its_marker_and_both_diffs(tmp_path: Path) -> None:
    outputs = write_outputs(
        tmp_path, validation={**VALIDATION, "passed": True, "checks": []}, gate={**GATE, "eligible": True}
    )
    body = ci_report.pull_request_comment("origin/main", "PARAMS-TABLE\n", "METRICS-TABLE\n", outputs)
    assert body.startswith(ci_report.COMMENT_MARKER)
    assert body.count(ci_report.COMMENT_MARKER) == 1
    assert "Compared with `origin/main`" in body
    assert body.index("PARAMS-TABLE") < body.index("METRICS-TABLE") < body.index("Data validation: passed")
    assert body.index("Data validation: passed") < body.index("### Backtest: 2 folds") < body.index("Quality gate")


@pytest.mark.integration
def test_dvc_diffs_against_a_base_commit(project: Path) -> None:
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("learning_rate: 0.1", "learning_rate: 0.05"))
    metrics = project / "outputs" / "evaluation" / "metrics.json"
    data = json.loads(metrics.read_text())
    data["model"]["rmse"] += 1.5
    metrics.write_text(json.dumps(data))

    params_diff = ci_report.dvc_diff("params", "HEAD", cwd=project)
    metrics_diff = ci_report.dvc_diff("metrics", "HEAD", cwd=project)

    assert "train.hist_gradient_boosting.learning_rate" in params_diff
    assert "0.05" in params_diff
    assert "model.rmse" in metrics_diff
    assert "1.5" in metrics_diff
    run_ok(["git", "checkout", "--", "."], project)
    assert ci_report.dvc_diff("params", "HEAD", cwd=project) == "No params changed against `HEAD`.\n"
    assert "unknown Git revision" in ci_report.dvc_diff("params", "no-such-branch", cwd=project)


def test_the_metrics_name_the_datasets_periods_and_unit(tmp_path: Path) -> None:
    outputs = write_outputs(tmp_path, validation={**VALIDATION, "passed": True, "checks": []}, gate=GATE)
    inputs = load(ROOT / "dataset.yaml").inputs()
    (outputs / "prepared").mkdir()
    (outputs / "prepared" / "inputs.json").write_text(inputs.model_dump_json())
    summary = ci_report.job_summary(outputs)
    assert "### Test metrics (1,316 hours)" in summary
    assert "| | RMSE (bikes) | MAE (bikes) | R² |" in summary
