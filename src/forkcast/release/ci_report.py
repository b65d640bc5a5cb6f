"""What the pipeline workflow publishes: the job summary, and the one pull-request comment.

Both are Markdown built from the files the stages wrote (validation report, metrics, gate verdict);
the comment adds `dvc params diff` and `dvc metrics diff` against the pull request's base.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from forkcast import atomic, paths
from forkcast.data.declaration import Inputs, figure, read_inputs
from forkcast.model.gate import comparison_table

COMMENT_MARKER = "<!-- forkcast-pipeline -->"
FAILED_CHECKS_SHOWN = 10


def _cell(value: object) -> str:
    """Text safe inside a Markdown table cell (data values come from whoever sent the data)."""
    return str(value).replace("\n", " ").replace("|", "\\|")


def _code(value: object) -> str:
    return f"`{_cell(value).replace('`', chr(39))}`"


def read_validation(outputs: Path) -> dict[str, Any] | None:
    """This run's validation report. report.json is committed (for `dvc metrics diff`), report.md is not:
    without the Markdown beside it, the JSON is the last commit's, not a verdict on this run's data."""
    if not (outputs / "validation" / "report.md").exists():
        return None
    report: dict[str, Any] | None = atomic.read_json_if_exists(outputs / "validation" / "report.json")
    return report


def validation_section(report: dict[str, Any] | None) -> str:
    """The headline of the validation report, and the checks that failed with sample rows."""
    if report is None:
        return "### Data validation\n\nNot run in this run: the pipeline stopped before it.\n"
    s = report["summary"]
    lines = [
        f"### Data validation: {'passed' if report['passed'] else 'FAILED'}",
        "",
        "| rows | checks passed | share of checks | rows passing every check |",
        "| ---: | ---: | ---: | ---: |",
        f"| {s['rows']:,} | {s['checks_passed']} / {s['checks']} | {s['share_of_checks_passed']:.1%} "
        f"| {s['rows_passing_all_checks']:,} ({s['share_of_rows_passed']:.2%}) |",
    ]
    failed = [check for check in report["checks"] if not check["passed"]]
    if failed:
        lines += [
            "",
            "| failed check | rule | pass rate | required | sample failing values |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for check in failed[:FAILED_CHECKS_SHOWN]:
            samples = ", ".join(_code(sample) for sample in check["failure_samples"][:3]) or _cell(check["error"] or "")
            lines.append(
                f"| {_code(check['name'])} | {_cell(check['description'])} | {check['pass_rate']:.2%} "
                f"| {check['min_pass_rate']:.2%} | {samples} |"
            )
        if len(failed) > FAILED_CHECKS_SHOWN:
            lines.append(f"\n… and {len(failed) - FAILED_CHECKS_SHOWN} more in the validation report artifact.")
    return "\n".join(lines) + "\n"


def metrics_section(metrics: dict[str, Any] | None, inputs: Inputs | None = None) -> str:
    if metrics is None:
        return "### Test metrics\n\nNot computed: the pipeline stopped before evaluation.\n"
    model, baseline = metrics["model"], metrics["baseline"]
    periods = inputs.rows if inputs else "rows"
    unit = f" ({_cell(inputs.target.unit)})" if inputs else ""
    return (
        f"### Test metrics ({metrics['test_rows']:,} {periods})\n\n"
        f"| | RMSE{unit} | MAE{unit} | R² |\n| --- | ---: | ---: | ---: |\n"
        f"| model | {figure(model['rmse'])} | {figure(model['mae'])} | {model['r2']:.3f} |\n"
        f"| seasonal baseline | {figure(baseline['rmse'])} | {figure(baseline['mae'])} | {baseline['r2']:.3f} |\n"
    )


def backtest_section(backtest: dict[str, Any] | None, inputs: Inputs | None = None) -> str:
    """The rolling-origin backtest the gate judged: each fold, then each metric's mean and spread."""
    if backtest is None:
        return "### Backtest\n\nNot run: the pipeline stopped before it.\n"
    unit = f" ({_cell(inputs.target.unit)})" if inputs else ""
    lines = [
        f"### Backtest: {len(backtest['folds'])} folds, each trained on every earlier row\n",
        f"| fold | test rows | model RMSE{unit} | baseline RMSE{unit} | model MAE | baseline MAE |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fold in backtest["folds"]:
        model, baseline = fold["model"], fold["baseline"]
        lines.append(
            f"| {fold['fold']} | {fold['test_rows']:,} | {figure(model['rmse'])} | {figure(baseline['rmse'])} "
            f"| {figure(model['mae'])} | {figure(baseline['mae'])} |"
        )
    model, baseline = backtest["model"], backtest["baseline"]
    spread = " | ".join(
        f"**{figure(who[m]['mean'])} ± {figure(who[m]['std'])}**"
        for who, m in ((model, "rmse"), (baseline, "rmse"), (model, "mae"), (baseline, "mae"))
    )
    lines.append(f"| mean ± std | | {spread} |")
    return "\n".join(lines) + "\n"


def gate_section(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "### Quality gate\n\nNot run: the pipeline stopped before it. Nothing will be released.\n"
    verdict = "eligible for release" if gate["eligible"] else "REJECTED: nothing will be released"
    table = "\n".join(comparison_table(gate["verdict"])).rstrip()
    return (
        f"### Quality gate: {verdict}\n\n{table}\n\n"
        f"Model `{gate['model_name']}` v{gate['version']}, MLflow run `{gate['run_id']}`.\n"
    )


def headline(validation: dict[str, Any] | None, gate: dict[str, Any] | None) -> str:
    if validation is not None and not validation["passed"]:
        return "data validation failed"
    if gate is None:
        return "the pipeline did not finish"
    if gate["eligible"] and gate["verdict"].get("unchanged"):
        return "the same model as production: nothing to release"
    return "eligible for release" if gate["eligible"] else "the quality gate rejected the model"


def gate_outputs(outputs: Path = paths.OUTPUTS) -> str | None:
    """`eligible=` and `unchanged=` (true|false) for the workflow's release decision: a model is released when it is
    eligible and not production's own; None when the gate did not run."""
    gate = atomic.read_json_if_exists(outputs / "registry" / "gate.json")
    if gate is None:
        return None
    unchanged = bool(gate["verdict"].get("unchanged"))
    return f"eligible={str(gate['eligible']).lower()}\nunchanged={str(unchanged).lower()}\n"


def job_summary(outputs: Path = paths.OUTPUTS) -> str:
    validation = read_validation(outputs)
    gate = atomic.read_json_if_exists(outputs / "registry" / "gate.json")
    metrics = atomic.read_json_if_exists(outputs / "evaluation" / "metrics.json") if gate is not None else None
    backtest = atomic.read_json_if_exists(outputs / "evaluation" / "backtest.json") if gate is not None else None
    inputs = read_inputs(outputs / "prepared" / "inputs.json")
    return "\n".join(
        [
            f"## Forkcast pipeline: {headline(validation, gate)}\n",
            validation_section(validation),
            metrics_section(metrics, inputs),
            backtest_section(backtest, inputs),
            gate_section(gate),
        ]
    )


def dvc_diff(kind: str, base: str, cwd: Path | None = None) -> str:
    """`dvc params diff` or `dvc metrics diff` of the workspace against `base`, as a Markdown table."""
    result = subprocess.run(
        [sys.executable, "-m", "dvc", kind, "diff", base, "--md"], capture_output=True, text=True, cwd=cwd, check=False
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"`dvc {kind} diff {base}` failed: {reason}\n"
    table = result.stdout.strip()
    if len(table.splitlines()) <= 2:  # a header and its rule: nothing changed
        return f"No {kind} changed against `{base}`.\n"
    return table + "\n"


def pull_request_comment(base: str, params_diff: str, metrics_diff: str, outputs: Path = paths.OUTPUTS) -> str:
    """The body of the ONE comment the pipeline keeps up to date on a pull request (found by its marker)."""
    validation = read_validation(outputs)
    gate = atomic.read_json_if_exists(outputs / "registry" / "gate.json")
    return "\n".join(
        [
            COMMENT_MARKER,
            f"## Forkcast pipeline: {headline(validation, gate)}\n",
            f"Compared with `{base}`.\n",
            f"### Params diff\n\n{params_diff}",
            f"### Metrics diff\n\n{metrics_diff}",
            validation_section(validation),
            backtest_section(
                atomic.read_json_if_exists(outputs / "evaluation" / "backtest.json") if gate is not None else None,
                read_inputs(outputs / "prepared" / "inputs.json"),
            ),
            gate_section(gate),
            "_This comment is updated in place by each run of the pipeline workflow._",
        ]
    )
