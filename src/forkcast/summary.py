"""The end-of-run summary: what a person wants to see after `make run`."""

from __future__ import annotations

from typing import Any

from forkcast import atomic, paths
from forkcast.data.declaration import Inputs, figure, read_inputs
from forkcast.monitoring.drift import DRIFT, NO_DATA
from forkcast.serving import deploy


def versus_baseline(improvement: float) -> str:
    if improvement >= 0:
        return f"{improvement:.1%} better than the baseline"
    return f"{-improvement:.1%} WORSE than the baseline"


def pipeline_summary() -> str:
    validation = atomic.read_json_if_exists(paths.VALIDATION_JSON)
    metrics = atomic.read_json_if_exists(paths.METRICS_JSON)
    gate = atomic.read_json_if_exists(paths.GATE_JSON)
    inputs = read_inputs(paths.PREPARED_INPUTS)
    lines = ["", "Forkcast pipeline summary", "========================="]
    if validation:
        s = validation["summary"]
        lines.append(
            f"data validation   {'passed' if validation['passed'] else 'FAILED'}: {s['checks_passed']}/{s['checks']} "
            f"checks ({s['share_of_checks_passed']:.1%}), {s['share_of_rows_passed']:.2%} of {s['rows']:,} rows clean"
            f"  -> {paths.VALIDATION_MD}"
        )
    if validation and not validation["passed"] and metrics:
        lines.append("(validation failed: the figures below come from the last run that got past it)")
    if metrics:
        model, baseline = metrics["model"], metrics["baseline"]
        unit = f"   in {inputs.target.unit}" if inputs else ""
        test_set = f"test set ({metrics['test_rows']:,} {_periods(inputs)})"
        width = max(len(test_set) + 1, 24)  # the figures stay under their headers whatever the label's length
        lines += [
            f"{test_set:<{width}}{'RMSE':>7}{'MAE':>7}{'R²':>7}{unit}",
            f"{'  model':<{width}}{figure(model['rmse']):>7}{figure(model['mae']):>7}{model['r2']:>7.3f}",
            f"{'  baseline':<{width}}{figure(baseline['rmse']):>7}{figure(baseline['mae']):>7}{baseline['r2']:>7.3f}"
            f"   (RMSE {versus_baseline(metrics['rmse_improvement_over_baseline'])})",
        ]
    if gate and metrics and paths.GATE_JSON.stat().st_mtime < paths.METRICS_JSON.stat().st_mtime:
        lines.append("(register has not finished since the last evaluation: the gate below judged an earlier model)")
    backtest = atomic.read_json_if_exists(paths.BACKTEST_JSON)
    if backtest:
        model, baseline = backtest["model"]["rmse"], backtest["baseline"]["rmse"]
        lines.append(
            f"backtest          RMSE {figure(model['mean'])} ± {figure(model['std'])} over {len(backtest['folds'])} "
            f"folds, baseline {figure(baseline['mean'])} ± {figure(baseline['std'])}"
            f" ({versus_baseline(backtest['rmse_improvement_over_baseline'])})  -> {paths.BACKTEST_CSV}"
        )
    if gate:
        verdict = gate["verdict"]
        lines.append(f"quality gate      {'ELIGIBLE for promotion' if gate['eligible'] else 'REJECTED'}:")
        lines += [f"                    {gate_line(c, verdict['metric'])}" for c in verdict.get("comparisons", [])]
        lines += [f"                    {note}" for note in verdict.get("notes", [])]
        lines += [
            f"MLflow            {gate['model_name']} v{gate['version']} (alias candidate), run {gate['run_id']}",
            f"                  store {gate['tracking_uri']}; browse with `make ui`",
        ]
    else:
        lines.append("quality gate      not run yet (the pipeline stopped earlier)")
    lines += serving_lines()
    lines += drift_lines(inputs)
    return "\n".join(lines)


def gate_line(comparison: dict[str, Any], metric: str) -> str:
    """One comparison of gate.json in a line: pass or FAIL, the figures, and how they were obtained."""
    word = "pass" if comparison["passed"] else "FAIL"
    return (
        f"{word}  vs {comparison['against']}: {metric} {figure(comparison['candidate'])} vs "
        f"{figure(comparison['reference'])} (at most {figure(comparison['allowed'])})"
    )


def _periods(inputs: Inputs | None) -> str:
    return inputs.rows if inputs else "rows"


def serving_lines() -> list[str]:
    """One line per local deployment: what it serves, where, and whether its smoke tests passed."""
    lines = []
    for environment in deploy.ENVIRONMENTS:
        current = deploy.load(environment)
        if current is None:
            lines.append(f"{environment:<17} not deployed")
            continue
        ran = current.smoke if current.smoke_state != "not run" else None
        report = f"  -> {str(ran['report']).replace('.json', '.md')}" if ran else ""
        lines.append(f"{environment:<17} {current.bento} at {current.url}, smoke tests {current.smoke_state}{report}")
    return lines


def drift_lines(inputs: Inputs | None = None) -> list[str]:
    """The last drift report of each environment that has one: its verdict and where to look."""
    reports = {name: paths.OUTPUTS / "drift" / name for name in deploy.ENVIRONMENTS}
    outcomes = {name: atomic.read_json_if_exists(path / "drift.json") for name, path in reports.items()}
    if not any(outcomes.values()):
        return []
    lines = []
    for environment, outcome in outcomes.items():
        if outcome is None:
            continue
        if outcome["verdict"] == NO_DATA:
            lines.append(f"drift ({environment}) no production data yet  -> {reports[environment] / 'summary.md'}")
            continue
        found = "; ".join(outcome["reasons"]) if outcome["reasons"] else "no drift"
        verdict = f"DRIFT: {found}" if outcome["verdict"] == DRIFT else "no drift"
        rows = outcome["rows"]["in_window"]
        lines.append(
            f"drift ({environment}) {rows:,} logged {_periods(inputs)}: {verdict}"
            f"  -> {reports[environment] / 'report.html'}"
        )
    return lines
