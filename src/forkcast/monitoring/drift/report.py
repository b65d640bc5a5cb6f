"""The drift job's outputs: report.html, drift.json and summary.md, swapped in whole."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from forkcast.data.declaration import figure
from forkcast.monitoring.drift import (
    DRIFT,
    NO_DATA,
    NO_DRIFT,
)

METHOD_NAMES = {"jensenshannon": "Jensen-Shannon", "wasserstein": "Wasserstein (std)"}


def write_outputs(directory: Path, outcome: dict[str, Any], snapshot: Any | None) -> None:
    """Write the report into a fresh directory beside `directory`, then swap it in whole.

    Anything failing before the swap leaves the previous report as it was; during the swap (two renames)
    a reader may briefly find no directory, never a half-written one.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        if snapshot is not None:
            snapshot.save_html(str(staging / "report.html"))
        (staging / "drift.json").write_text(json.dumps(outcome, indent=2, default=str) + "\n")
        (staging / "summary.md").write_text(summary_markdown(outcome))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; reports are ordinary directories
        _swap_in(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, directory: Path) -> None:
    if not directory.exists():
        os.rename(staging, directory)
        return
    previous = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(directory, previous)
    try:
        os.rename(staging, directory)
    except OSError:
        os.rename(previous, directory)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def summary_markdown(outcome: dict[str, Any]) -> str:
    """A verdict line, then tables: input drift per feature, prediction drift, quality, performance."""
    lines = [f"## Drift: {outcome['environment']}: {_verdict_words(outcome)}", "", _window_line(outcome), ""]
    if outcome["verdict"] == NO_DATA:
        lines += [
            f"**No production data yet**: {outcome['reasons'][0]}. Nothing was compared, and no drift is claimed.",
            "",
            f"Next: {outcome['next']}.",
        ]
        return "\n".join(lines) + "\n"
    lines += [_reference_line(outcome), ""]
    if outcome["warnings"]:
        lines += [*[f"> warning: {text}" for text in outcome["warnings"]], ""]
    lines += [*_feature_table(outcome), "", *_prediction_table(outcome), "", *_quality_table(outcome)]
    if outcome["performance"] is not None:
        lines += ["", *_performance_table(outcome)]
    lines += [
        "",
        "The full report is `report.html` (Evidently) beside this file; the figures are in `drift.json`. "
        "Thresholds: `monitor` in params.yaml.",
    ]
    return "\n".join(lines) + "\n"


def _verdict_words(outcome: dict[str, Any]) -> str:
    if outcome["verdict"] == DRIFT:
        return "**DRIFT** (" + "; ".join(outcome["reasons"]) + ")"
    if outcome["verdict"] == NO_DRIFT:
        return "no drift"
    return "no production data yet"


def _window_line(outcome: dict[str, Any]) -> str:
    window, rows = outcome["window"], outcome["rows"]
    days = f"{window['days']:g} day{'' if window['days'] == 1 else 's'}"
    text = f"Window: {window['since']} to {window['until']} ({days}), log `{outcome['sink']}`: "
    text += f"{rows['in_window']:,} records"
    if rows["smoke_dropped"]:
        text += f" ({rows['smoke_dropped']:,} smoke-test and probe records dropped)"
    if rows.get("sampled"):
        text += f"; compared a seeded uniform sample of {rows['compared']:,} (monitor.max_rows)"
    served = outcome.get("model_versions_served") or {}
    if served:
        text += "; served by model version " + ", ".join(f"v{v} ({n:,})" for v, n in served.items())
    return text + "."


def _reference_line(outcome: dict[str, Any]) -> str:
    reference, model = outcome["reference"], outcome["reference"]["model"]
    span = f", {reference['start']} to {reference['end']}" if "start" in reference else ""
    data = f", data {reference['data_hash']}" if reference.get("data_hash") else ""
    version = f"model v{model['model_version']}" if model.get("model_version") else "the model (version unknown)"
    trained_on = f", trained on data {model['data_hash']}" if model.get("data_hash") else ""
    return (
        f"Reference: `{reference['path']}` ({reference['rows']:,} rows{span}{data}), predictions by {version} "
        f"from {model['source']}{trained_on}."
    )


def _feature_table(outcome: dict[str, Any]) -> list[str]:
    drift = outcome["input_drift"]
    lines = [
        f"### Input drift: {drift['drifted_features']} of {drift['features']} features ({drift['share']:.0%}; "
        f"drift from {outcome['thresholds']['drift_share']:.0%})",
        "",
        "| feature | method | distance | threshold | drifted |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for row in drift["per_feature"]:
        lines.append(
            f"| {row['feature']} | {METHOD_NAMES.get(row['method'], row['method'])} | {row['score']:.3f} | "
            f"{row['threshold']:g} | {'**yes**' if row['drifted'] else 'no'} |"
        )
    return lines


def _unit(outcome: dict[str, Any]) -> str:
    return f" ({outcome['unit']})" if outcome.get("unit") else ""


def _prediction_table(outcome: dict[str, Any]) -> list[str]:
    row, unit = outcome["prediction_drift"], _unit(outcome)
    return [
        "### Prediction drift",
        "",
        f"| method | distance | threshold | drifted | mean prediction (window){unit} "
        f"| mean prediction (reference){unit} |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
        f"| {METHOD_NAMES.get(row['method'], row['method'])} | {row['score']:.3f} | {row['threshold']:g} | "
        f"{'**yes**' if row['drifted'] else 'no'} | {figure(row['current_mean'])} | {figure(row['reference_mean'])} |",
    ]


def _quality_table(outcome: dict[str, Any]) -> list[str]:
    novel = [row["feature"] for row in outcome["quality"] if row["outside_training"]]
    if novel:
        reading = f"{', '.join(novel)} had values the model never saw in training."
    elif outcome["input_drift"]["detected"]:
        reading = (
            "Every value is inside the training range and categories: the drift is a different mix of known "
            "conditions (e.g. one season of a multi-season training set), not conditions the model never saw."
        )
    else:
        reading = "Every value is inside the training range and categories."
    lines = [
        f"### Data quality ({outcome['rows']['in_window']:,} records)",
        "",
        "| feature | missing | outside training | detail |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in outcome["quality"]:
        share = f"{row['outside_training']:,} ({row['share_outside']:.1%})" if row["outside_training"] else "0"
        lines.append(f"| {row['feature']} | {row['missing']:,} | {share} | {row['detail']} |")
    return [*lines, "", reading]


def _performance_table(outcome: dict[str, Any]) -> list[str]:
    perf = outcome["performance"]

    def number(value: float | None) -> str:
        return "unknown" if value is None else figure(value)

    verdict = "not judged"
    if perf["judged"]:
        found = [word for word, hit in (("WORSE than the baseline", perf["worse_than_baseline"]),
                                         ("BIASED", perf["biased"])) if hit]  # fmt: skip
        verdict = f"**{' and '.join(found)}**" if found else "better than the baseline, unbiased"
    bias = "unknown" if perf["bias"] is None else f"{perf['bias']:+.1%}"
    thresholds = outcome["thresholds"]
    return [
        f"### Performance on labelled records: {verdict}",
        "",
        f"| on the {perf['labelled_rows']:,} labelled records of the window | RMSE{_unit(outcome)} "
        f"| MAE{_unit(outcome)} | bias |",
        "| --- | ---: | ---: | ---: |",
        f"| the model | {number(perf['rmse'])} | {number(perf['mae'])} | {bias} |",
        f"| the naive seasonal baseline | {number(perf['baseline_rmse'])} | | |",
        "",
        f"Allowed: RMSE up to {number(perf['allowed_rmse'])} (the baseline's + "
        f"{thresholds['max_error_vs_baseline']:.0%}), bias within ±{thresholds['max_bias']:.0%} of the mean true "
        f"value {number(perf['mean_actual'])}; {perf['judgement']}. The model's own test RMSE was "
        f"{number(perf['test_rmse'])}.",
    ]
