"""What the drift job finds: data quality, input and prediction drift (Evidently), and the error on labelled rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from forkcast.data.declaration import Dataset, figure
from forkcast.model.metrics import seasonal_baseline
from forkcast.monitoring.drift import DRIFT, EXIT_DRIFT, EXIT_NO_DATA, EXIT_NO_DRIFT, NO_DATA, NO_DRIFT
from forkcast.monitoring.drift.reference import ModelInfo, Reference
from forkcast.monitoring.drift.traffic import SAMPLE_SEED, Traffic, Window, current_frame, join_labels, sample
from forkcast.serving.contract import PREDICTION

if TYPE_CHECKING:
    from forkcast.config import MonitorParams


@dataclass(frozen=True)
class Context:
    """What every result says: where it looked, with which settings, and how each feature is compared."""

    environment: str
    sink: str
    window: Window
    monitor: MonitorParams
    dataset: Dataset  # the declaration: the features, their drift kinds, the frequency and the unit

    @property
    def kinds(self) -> dict[str, str]:
        """Each feature (in model order) and how it is compared: discrete or continuous."""
        return dict(self.dataset.drift_kinds())

    @property
    def features(self) -> list[str]:
        return list(self.dataset.feature_names)

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sink": self.sink,
            "window": self.window.as_dict(),
            "unit": self.dataset.unit,
            "kinds": self.kinds,
            "thresholds": self.monitor.model_dump(exclude={"probe_budget_ms"}),
        }


def quality(traffic: Traffic, reference: pd.DataFrame, kinds: dict[str, str]) -> list[dict[str, Any]]:
    """Per feature, on every row of the window: missing values, and values the training data never had."""
    rows = []
    for name, kind in kinds.items():
        column = traffic.table[name]
        present = column.length() - column.null_count
        if kind == "continuous":
            low, high = float(reference[name].min()), float(reference[name].max())
            # Compared in the log's own type (float32), so a training maximum is not "outside" by rounding.
            bounds = pa.scalar(low, type=column.type), pa.scalar(high, type=column.type)
            outside_mask = pc.or_(pc.less(column, bounds[0]), pc.greater(column, bounds[1]))
            detail = f"training range {low:g} to {high:g}"
        else:
            seen = sorted(reference[name].dropna().unique().tolist())
            outside_mask = pc.invert(pc.is_in(column, value_set=pa.array(seen).cast(column.type)))
            unseen = pc.unique(column.filter(pc.fill_null(outside_mask, False))).drop_null().to_pylist()
            detail = (
                f"unseen: {', '.join(map(str, sorted(unseen)))}" if unseen else f"{len(seen)} values seen in training"
            )
        outside = int(pc.sum(pc.fill_null(outside_mask, False)).as_py() or 0)
        rows.append(
            {
                "feature": name,
                "missing": int(column.null_count),
                "outside_training": outside,
                "share_outside": outside / present if present else 0.0,
                "detail": detail,
            }
        )
    return rows


@dataclass(frozen=True)
class Comparison:
    snapshot: Any  # evidently's Snapshot: save_html, dict
    features: list[dict[str, Any]]  # feature, method, score, threshold, drifted
    drifted: int
    share: float
    input_drift: bool
    prediction: dict[str, Any]  # method, score, threshold, drifted


def compare(
    reference: pd.DataFrame, current: pd.DataFrame, monitor: MonitorParams, kinds: dict[str, str]
) -> Comparison:
    """Input and prediction drift with Evidently (its import alone takes seconds: it happens here)."""
    from evidently import DataDefinition, Report
    from evidently import Dataset as Data
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    continuous = [name for name, kind in kinds.items() if kind == "continuous"]
    discrete = [name for name, kind in kinds.items() if kind == "discrete"]
    definition = DataDefinition(numerical_columns=[*continuous, PREDICTION], categorical_columns=discrete)
    threshold = monitor.feature_threshold
    report = Report(
        [
            DataDriftPreset(
                columns=list(kinds),
                drift_share=monitor.drift_share,
                num_method="wasserstein",
                cat_method="jensenshannon",
                num_threshold=threshold,
                cat_threshold=threshold,
            ),
            ValueDrift(column=PREDICTION, method="wasserstein", threshold=monitor.prediction_threshold),
        ],
        include_tests=True,
    )
    columns = [*kinds, PREDICTION]
    snapshot = report.run(
        current_data=Data.from_pandas(current[columns], data_definition=definition),
        reference_data=Data.from_pandas(reference[columns], data_definition=definition),
    )
    return _read_snapshot(snapshot, list(kinds))


def _read_snapshot(snapshot: Any, names: list[str]) -> Comparison:
    """Scores from Evidently's metrics, verdicts from its tests (a FAIL is a drift)."""
    content = snapshot.dict()
    failed = {
        test["metric_config"]["metric_id"]: str(getattr(test["status"], "value", test["status"])) == "FAIL"
        for test in content.get("tests", [])
    }
    features: dict[str, dict[str, Any]] = {}
    count: dict[str, Any] = {}
    for metric in content["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            count = {**metric["value"], "detected": failed.get(metric["id"], False)}
        elif kind == "ValueDrift":
            features[config["column"]] = {
                "feature": config["column"],
                "method": config["method"],
                "score": float(metric["value"]),
                "threshold": float(config["threshold"]),
                "drifted": failed.get(metric["id"], False),
            }
    prediction = features.pop(PREDICTION)
    return Comparison(
        snapshot=snapshot,
        features=[features[name] for name in names],
        drifted=int(count["count"]),
        share=float(count["share"]),
        input_drift=bool(count["detected"]),
        prediction=prediction,
    )


def performance(labelled: pd.DataFrame | None, reference: Reference, context: Context) -> dict[str, Any] | None:
    """The error on labelled rows against the naive seasonal baseline's on the same rows (fitted on the reference),
    and the bias: mean error / mean true value. Either beyond its threshold is drift."""
    if labelled is None:
        return None
    monitor, frequency = context.monitor, context.dataset.time.frequency
    model = reference.model
    needed = round(monitor.min_labelled_cycles * frequency.rows_per_cycle * model.inputs.rows_per_period)
    rows = len(labelled)
    actual = labelled["actual"].to_numpy(np.float64)
    error = labelled[PREDICTION].to_numpy(np.float64) - actual
    rmse = float(np.sqrt(np.mean(error**2))) if rows else None
    mae = float(np.mean(np.abs(error))) if rows else None
    mean_actual = float(np.mean(actual)) if rows else None
    # Relative to the size of the true values (their mean's magnitude), so a negative target keeps the sign.
    bias = float(np.mean(error)) / abs(mean_actual) if rows and mean_actual and abs(mean_actual) > 1e-9 else None
    baseline_rmse = _baseline_rmse(labelled, reference, context) if rows else None
    allowed = baseline_rmse * (1 + monitor.max_error_vs_baseline) if baseline_rmse is not None else None
    if rows < needed:
        judgement = (
            f"not judged: {rows:,} labelled {context.dataset.inputs().rows}, fewer than monitor.min_labelled_cycles "
            f"({monitor.min_labelled_cycles:g} {frequency.cycle}s of {frequency.rows_per_cycle}: {needed:,})"
        )
    else:
        judgement = "judged" if allowed is not None else "judged on the bias only: the reference has no true values"
    judged = rows >= needed
    return {
        "labelled_rows": rows,
        "needed_rows": needed,
        "rmse": rmse,
        "mae": mae,
        "mean_actual": mean_actual,
        "bias": bias,
        "max_bias": monitor.max_bias,
        "baseline_rmse": baseline_rmse,
        "allowed_rmse": allowed,
        "test_rmse": model.test_metrics.get("rmse"),
        "judged": judged,
        "judgement": judgement,
        "worse_than_baseline": bool(judged and rmse is not None and allowed is not None and rmse > allowed),
        "biased": bool(judged and bias is not None and abs(bias) > monitor.max_bias),
    }


def _baseline_rmse(labelled: pd.DataFrame, reference: Reference, context: Context) -> float | None:
    """The naive seasonal baseline (the mean true value of the reference rows with the same seasonal keys) on the
    labelled rows: what knowing nothing but the calendar would have scored on them."""
    keys = list(context.dataset.seasonal_keys)
    if reference.targets is None or any(key not in labelled.columns for key in keys):
        return None
    history = reference.frame[keys].assign(actual=reference.targets.to_numpy())
    baseline = seasonal_baseline(history, "actual", labelled, keys).to_numpy(np.float64)
    return float(np.sqrt(np.mean((baseline - labelled["actual"].to_numpy(np.float64)) ** 2)))


def no_data_result(context: Context, traffic: Traffic) -> dict[str, Any]:
    window = context.window
    smoke = f" ({traffic.smoke_rows:,} smoke-test and probe rows dropped)" if traffic.smoke_rows else ""
    reason = (
        f"no records in the inference log {context.sink} between {window.since:%Y-%m-%d %H:%M} and "
        f"{window.until:%Y-%m-%d %H:%M} UTC{smoke}"
    )
    return {
        **context.as_dict(),
        "verdict": NO_DATA,
        "exit_code": EXIT_NO_DATA,
        "reasons": [reason],
        "next": f"deploy (`forkcast deploy --env {context.environment}`) and send it traffic, or replay some "
        f"(`forkcast replay`), then run `forkcast drift --env {context.environment}` again",
        "rows": {"in_window": 0, "smoke_dropped": traffic.smoke_rows, "compared": 0, "sampled": False},
        "warnings": [],
        **dict.fromkeys(("reference", "input_drift", "prediction_drift", "quality", "performance", "report_html")),
    }


def result(
    context: Context,
    *,
    traffic: Traffic,
    reference: Reference,
    comparison: Comparison,
    quality_rows: list[dict[str, Any]],
    judged: dict[str, Any] | None,
    current: pd.DataFrame,
) -> dict[str, Any]:
    monitor = context.monitor
    compared_rows = len(current)
    reasons = []
    if comparison.input_drift:
        reasons.append(
            f"input drift: {comparison.drifted} of {len(context.features)} features drifted ({comparison.share:.0%}, "
            f"threshold {monitor.drift_share:.0%})"
        )
    prediction = comparison.prediction
    if prediction["drifted"]:
        reasons.append(f"prediction drift: distance {prediction['score']:.3f} >= {prediction['threshold']:g}")
    if judged and judged["worse_than_baseline"]:
        reasons.append(
            f"labelled RMSE {figure(judged['rmse'])} > allowed {figure(judged['allowed_rmse'])} (the seasonal "
            f"baseline's {figure(judged['baseline_rmse'])} on the same rows + {monitor.max_error_vs_baseline:.0%}, "
            f"in {context.dataset.unit})"
        )
    if judged and judged["biased"]:
        reasons.append(
            f"bias {judged['bias']:+.1%} of the mean true value {figure(judged['mean_actual'])} (beyond "
            f"±{monitor.max_bias:.0%}): predictions are systematically {'high' if judged['bias'] > 0 else 'low'}"
        )
    drifted = bool(reasons)
    timestamps = traffic.table["timestamp"]
    served = {
        str(item["values"]): int(item["counts"]) for item in pc.value_counts(traffic.table["model_version"]).to_pylist()
    }
    return {
        **context.as_dict(),
        "verdict": DRIFT if drifted else NO_DRIFT,
        "exit_code": EXIT_DRIFT if drifted else EXIT_NO_DRIFT,
        "reasons": reasons,
        "rows": {
            "in_window": traffic.rows,
            "smoke_dropped": traffic.smoke_rows,
            "compared": compared_rows,
            "sampled": compared_rows < traffic.rows,
            "sample_seed": SAMPLE_SEED if compared_rows < traffic.rows else None,
            "first_record": str(pc.min(timestamps).as_py()),
            "last_record": str(pc.max(timestamps).as_py()),
        },
        "model_versions_served": served,
        "reference": {**reference.identity, "model": reference.model.identity},
        "warnings": [*reference.warnings, *_served_warnings(served, reference.model)],
        "input_drift": {
            "detected": comparison.input_drift,
            "drifted_features": comparison.drifted,
            "features": len(context.features),
            "share": comparison.share,
            "per_feature": comparison.features,
        },
        "prediction_drift": {
            **prediction,
            "current_mean": float(current[PREDICTION].mean()),
            "reference_mean": float(reference.frame[PREDICTION].mean()),
        },
        "quality": quality_rows,
        "performance": judged,
        "report_html": "report.html",
    }


def _served_warnings(served: dict[str, int], model: ModelInfo) -> list[str]:
    """The reference's predictions come from one model: say so when the window was served by others."""
    version = model.identity.get("model_version")
    others = sorted(v for v in served if v != version)
    if version is None or not others:
        return []
    return [
        f"the window was served by model version(s) {', '.join(others)}, but the reference's predictions come from "
        f"v{version}: the prediction drift compares different models"
    ]


def analyse(
    context: Context, traffic: Traffic, reference: Reference, labels: pd.DataFrame | None
) -> tuple[dict[str, Any], Any]:
    """Everything the report says about a window with traffic; the result and Evidently's snapshot."""
    quality_rows = quality(traffic, reference.frame, context.kinds)
    keys = [key for key in context.dataset.seasonal_keys if key in traffic.table.column_names]
    labelled = join_labels(traffic, labels, keys) if labels is not None else None
    judged = performance(labelled, reference, context)
    compared, _ = sample(traffic.table, context.monitor.max_rows)
    current = current_frame(compared, reference.frame, context.features)
    comparison = compare(reference.frame, current, context.monitor, context.kinds)
    outcome = result(
        context,
        traffic=traffic,
        reference=reference,
        comparison=comparison,
        quality_rows=quality_rows,
        judged=judged,
        current=current,
    )
    return outcome, comparison.snapshot
