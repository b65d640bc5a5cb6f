"""The drift job (`forkcast drift`): is production traffic still like the data the model was trained on?

Reference: the training data of the model in production (`outputs/prepared/train.parquet` by default), with
that model's predictions on it. The model is the one the environment's local deployment serves (its bento's
`model.joblib`), else the pipeline's `outputs/model/model.joblib`.

Current: the environment's inference log over the last `monitor.window_days`, without smoke-test traffic
(request ids starting with `smoke-`) and health probes (`probe-`). Only the needed columns are read.
Above `monitor.max_rows` rows, a seeded uniform sample of that size is compared (the report says so);
missing values, out-of-range values and labels are still counted on every row of the window.

What is compared:
- input drift, per feature (Evidently's DataDriftPreset): a distance, not a p-value (with 100,000 rows every
  p-value is tiny): Jensen-Shannon for the discrete features (calendar and weather situation), Wasserstein in
  training standard deviations for the continuous ones (temp, atemp, hum, windspeed). A feature drifts at
  `monitor.feature_threshold`; the input drifts when at least `monitor.drift_share` of the features do.
- prediction drift: the Wasserstein distance of the logged predictions from the model's predictions on the
  reference, against `monitor.prediction_threshold`.
- data quality: rows, missing values, values outside the training range and categories the model never saw.
- performance, when labels are known: RMSE and MAE of the labelled rows against the model's test RMSE, allowed
  to be `monitor.max_error_increase` worse, judged from `monitor.min_labelled_rows` labelled rows.

Marginal distributions cannot tell "a slice of what the model saw" from "what it never saw": a window much
narrower than the training period (a week of a nine-month set) differs from it in its seasonal features. The
quality counts (values outside the training range, categories never seen) tell the two apart, and the summary
says which it is. The thresholds and this limit are measured in benchmarks/README.md (Drift).

Labels arrive later than predictions: a Parquet or CSV file with one row per predicted record and the columns
`request_id` (the request's id, as logged), `position` (the record's index in that request, from 0) and
`actual` (the true count). Rows without an `actual` are ignored. `forkcast replay` writes this format to
`outputs/labels/<env>.parquet`, which is used when no labels file is given.

Outputs, in `outputs/drift/<env>/`: `report.html` (Evidently's self-contained report), `drift.json` (everything
above, the thresholds used and the reference's identity) and `summary.md` (for a job summary or an issue). They
are written to a temporary directory that then replaces the previous one: a failure leaves the previous report.

Verdict and exit codes: 0 no drift; 1 drift (input drift share at or above the threshold, prediction drift, or
an error worse than allowed); 2 usage or configuration error (no reference: run `dvc repro`); 3 no production
data yet (no log, or no rows in the window once smoke traffic is dropped): then only `drift.json` and
`summary.md` are written, saying so.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from forkcast import atomic, inference_log, paths
from forkcast.contract import CHECK_REQUEST_PREFIXES
from forkcast.features import CATEGORICAL_FEATURES, FEATURES

if TYPE_CHECKING:
    from forkcast.config import MonitorParams

EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_NO_DATA, EXIT_FAILED = 0, 1, 3, 4
NO_DRIFT, DRIFT, NO_DATA = "no drift", "drift", "no production data yet"

DISCRETE_FEATURES = ("season", "month", "hr", "holiday", "weekday", "workingday", *CATEGORICAL_FEATURES)
CONTINUOUS_FEATURES = tuple(name for name in FEATURES if name not in DISCRETE_FEATURES)
PREDICTION = "prediction"
LABEL_COLUMNS = ("request_id", "position", "actual")
LOG_COLUMNS = ("timestamp", "request_id", "position", "model_version", *FEATURES, PREDICTION)
SAMPLE_SEED = 20110101
DRIFT_DIR = paths.OUTPUTS / "drift"
LABELS_DIR = paths.OUTPUTS / "labels"
METHOD_NAMES = {"jensenshannon": "Jensen-Shannon", "wasserstein": "Wasserstein (std)"}


class DriftError(Exception):
    """A usage or configuration problem: a missing reference or model, a bad labels file, an unreadable log."""


def output_dir(environment: str) -> Path:
    return DRIFT_DIR / environment


def default_labels(environment: str) -> Path | None:
    """`outputs/labels/<env>.parquet` when `forkcast replay` (or you) wrote one."""
    path = LABELS_DIR / f"{environment}.parquet"
    return path if path.exists() else None


# --- the window ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    since: dt.datetime
    until: dt.datetime

    @classmethod
    def ending(cls, until: dt.datetime | None, days: int) -> Window:
        end = until or dt.datetime.now(dt.UTC)
        return cls(end - dt.timedelta(days=days), end)

    def as_dict(self) -> dict[str, Any]:
        days = (self.until - self.since) / dt.timedelta(days=1)
        return {
            "since": self.since.isoformat(timespec="seconds"),
            "until": self.until.isoformat(timespec="seconds"),
            "days": days,
        }


def parse_until(text: str | None) -> dt.datetime | None:
    """An ISO date or time (`2026-03-02`, `2026-03-02T06:00:00Z`); UTC unless it says otherwise."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DriftError(
            f"--until {text!r} is not an ISO date or time such as 2026-03-02 or 2026-03-02T06:00Z"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# --- the model and the reference ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    pipeline_file: Path
    identity: dict[str, Any]  # source, model_version, data_hash, trained_at (and bento, when deployed)
    test_metrics: dict[str, float]  # rmse, mae on the model's test split, where known


def production_model(environment: str) -> ModelInfo:
    """The model the environment's local deployment serves, else the pipeline's model."""
    from forkcast import deploy

    deployment = deploy.load(cast("deploy.Environment", environment))
    return _deployed_model(environment, deployment.bento) if deployment else _pipeline_model(environment)


def _deployed_model(environment: str, bento: str) -> ModelInfo:
    from forkcast import build
    from forkcast.predictor import PIPELINE_FILE

    build.use_project_store()
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        description = build.describe(bento)
        model = bentoml.models.get(description.model)
    except (build.BuildError, BentoMLException) as exc:
        raise DriftError(f"{environment} serves {bento}, which cannot be loaded: {exc}") from exc
    metadata: dict[str, Any] = dict(model.info.metadata)
    metrics: dict[str, Any] = metadata.get("metrics") or {}
    identity = {
        "source": f"the {environment} deployment",
        "bento": bento,
        "model_version": description.labels.get("model_version"),
        "data_hash": description.labels.get("data_hash"),
        "trained_at": metadata.get("trained_at"),
    }
    test_metrics = {key: float(metrics[f"test_{key}"]) for key in ("rmse", "mae") if f"test_{key}" in metrics}
    return ModelInfo(Path(model.path) / PIPELINE_FILE, identity, test_metrics)


def _pipeline_model(environment: str) -> ModelInfo:
    if not paths.MODEL_PICKLE.exists():
        raise DriftError(
            f"no model to compare with: nothing is deployed to {environment} and {paths.MODEL_PICKLE} is missing. "
            "Run `dvc repro` (or deploy with `forkcast deploy`)"
        )
    metadata = _read_json(paths.MODEL_METADATA)
    gate = _read_json(paths.GATE_JSON)
    trained_at = metadata.get("trained_at")
    same_model = trained_at is not None and gate.get("model_trained_at") == trained_at
    identity = {
        "source": f"the pipeline's model {paths.MODEL_PICKLE} (nothing is deployed to {environment} here)",
        "model_version": str(gate["version"]) if same_model and "version" in gate else None,
        "data_hash": metadata.get("data_hash"),
        "trained_at": trained_at,
    }
    model_metrics = _read_json(paths.METRICS_JSON).get("model", {})
    test_metrics = {key: float(model_metrics[key]) for key in ("rmse", "mae") if key in model_metrics}
    return ModelInfo(paths.MODEL_PICKLE, identity, test_metrics)


def _read_json(path: Path) -> dict[str, Any]:
    data = atomic.read_json_if_exists(path)
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame  # the features and the model's predictions
    model: ModelInfo
    identity: dict[str, Any]  # path, rows, time span, data hash where known
    warnings: tuple[str, ...]


def load_reference(path: Path, model: ModelInfo) -> Reference:
    """The training data with the model's own (clipped) predictions on it."""
    import joblib

    if not path.exists():
        raise DriftError(f"no reference data {path}: run `dvc repro` (or pass --reference PATH)")
    try:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DriftError(f"cannot read the reference data {path}: {exc}") from exc
    missing = [name for name in FEATURES if name not in frame.columns]
    if missing or frame.empty:
        problem = f"lacks the feature column(s) {', '.join(missing)}" if missing else "has no rows"
        raise DriftError(f"the reference data {path} {problem}: it must hold the model's training features")
    pipeline = joblib.load(model.pipeline_file)
    reference = frame[list(FEATURES)].copy()
    reference[PREDICTION] = np.clip(pipeline.predict(reference), 0.0, None)
    identity: dict[str, Any] = {"path": str(path), "rows": len(frame), "data_hash": _data_hash_of(path, frame)}
    if "timestamp" in frame.columns:
        identity |= {"start": str(frame["timestamp"].min()), "end": str(frame["timestamp"].max())}
    return Reference(reference, model, identity, _reference_warnings(identity, model))


def _data_hash_of(path: Path, frame: pd.DataFrame) -> str | None:
    """The data version of the pipeline's training split, when the model metadata describes this very split."""
    if path.resolve() != paths.prepared_split("train").resolve() or "timestamp" not in frame.columns:
        return None
    metadata = _read_json(paths.MODEL_METADATA)
    recorded = (metadata.get("splits") or {}).get("train") or {}
    matches = recorded.get("rows") == len(frame) and recorded.get("start") == frame["timestamp"].min().isoformat()
    return metadata.get("data_hash") if matches else None


def _reference_warnings(identity: dict[str, Any], model: ModelInfo) -> tuple[str, ...]:
    ours, theirs = identity["data_hash"], model.identity.get("data_hash")
    if ours and theirs and ours != theirs:
        version = model.identity.get("model_version") or "?"
        return (
            f"the reference is the training split of data {ours}, but model v{version} was trained on data "
            f"{theirs}: check that data out (`git checkout <its commit> data.dvc && dvc checkout && dvc repro`) "
            "or pass --reference",
        )
    if not ours:
        return ("the reference's data version is unknown: it is not the split the pipeline's model metadata describes",)
    return ()


# --- the current traffic ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    table: pa.Table  # the window's rows, smoke traffic dropped: LOG_COLUMNS only
    smoke_rows: int

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


def read_traffic(sink: str, window: Window) -> Traffic:
    """The window's logged records (only the columns the comparison needs), without smoke tests and probes."""
    try:
        table = inference_log.read(sink, since=window.since, columns=LOG_COLUMNS)
    except (OSError, pa.ArrowException) as exc:
        raise DriftError(f"cannot read the inference log at {sink}: {exc}") from exc
    until = pa.scalar(window.until.astimezone(dt.UTC), type=pa.timestamp("ms", tz="UTC"))
    in_window = pc.fill_null(pc.less(table["timestamp"], until), False)
    ids = table["request_id"]
    ours = pc.or_(*(pc.fill_null(pc.starts_with(ids, prefix), False) for prefix in CHECK_REQUEST_PREFIXES))
    smoke = pc.and_(in_window, ours)
    smoke_rows = int(pc.sum(smoke).as_py() or 0)
    return Traffic(table.filter(pc.and_(in_window, pc.invert(smoke))), smoke_rows)  # one copy, not two


def read_labels(path: Path) -> pd.DataFrame:
    """Known outcomes: request_id, position, actual; rows without an actual are not labelled yet."""
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype={"request_id": str})
        elif path.suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            raise DriftError(f"labels file {path}: expected .parquet or .csv")
    except (OSError, ValueError) as exc:
        raise DriftError(f"cannot read the labels file {path}: {exc}") from exc
    missing = [name for name in LABEL_COLUMNS if name not in frame.columns]
    if missing:
        raise DriftError(
            f"the labels file {path} lacks the column(s) {', '.join(missing)} "
            f"(it has {', '.join(map(str, frame.columns))}); a labels file has one row per predicted record: "
            "request_id, position (from 0), actual"
        )
    frame = frame[list(LABEL_COLUMNS)].dropna(subset=["actual"])
    try:
        position = pd.to_numeric(frame["position"], errors="raise")
        actual = pd.to_numeric(frame["actual"], errors="raise").astype("float64")
        if position.isna().any() or not (position == position.round()).all():
            raise ValueError("a position is missing or not a whole number")
    except (ValueError, TypeError) as exc:
        raise DriftError(f"the labels file {path}: position must be whole numbers and actual numbers ({exc})") from exc
    labels = pd.DataFrame(
        {"request_id": frame["request_id"].astype(str), "position": position.astype("int32"), "actual": actual}
    )
    duplicated = int(labels.duplicated(["request_id", "position"]).sum())
    if duplicated:
        raise DriftError(f"the labels file {path} labels {duplicated} (request_id, position) pair(s) more than once")
    return labels


def join_labels(traffic: Traffic, labels: pd.DataFrame) -> pd.DataFrame:
    """The window's labelled records: prediction and actual, over every row of the window (not the sample)."""
    known = pa.table(
        {
            "request_id": pa.array(labels["request_id"], pa.string()),
            "position": pa.array(labels["position"], pa.int32()),
            "actual": pa.array(labels["actual"], pa.float64()),
        }
    )
    logged = traffic.table.select(["request_id", "position", PREDICTION])
    joined = logged.join(known, keys=["request_id", "position"], join_type="inner")
    labelled: pd.DataFrame = joined.select([PREDICTION, "actual"]).to_pandas()
    return labelled


def sample(table: pa.Table, max_rows: int, seed: int = SAMPLE_SEED) -> tuple[pa.Table, bool]:
    """At most `max_rows` rows: a seeded uniform sample without replacement, in log order."""
    if table.num_rows <= max_rows:
        return table, False
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=max_rows, replace=False))
    return table.take(pa.array(keep)), True


def current_frame(table: pa.Table, reference: pd.DataFrame) -> pd.DataFrame:
    """The features and predictions as pandas, typed like the reference (the log stores int8 and float32)."""
    frame: pd.DataFrame = table.select([*FEATURES, PREDICTION]).to_pandas()
    for name in FEATURES:
        if frame[name].isna().any():
            continue  # an integer type cannot hold the gap; the quality table reports it
        frame[name] = frame[name].astype(reference[name].dtype)
    frame[PREDICTION] = frame[PREDICTION].astype("float64")
    return frame


# --- quality, drift, performance ----------------------------------------------------------------------------


def quality(traffic: Traffic, reference: pd.DataFrame) -> list[dict[str, Any]]:
    """Per feature, on every row of the window: missing values, and values the training data never had."""
    rows = []
    for name in FEATURES:
        column = traffic.table[name]
        present = column.length() - column.null_count
        if name in CONTINUOUS_FEATURES:
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


def compare(reference: pd.DataFrame, current: pd.DataFrame, monitor: MonitorParams) -> Comparison:
    """Input and prediction drift with Evidently (its import alone takes seconds: it happens here)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(
        numerical_columns=[*CONTINUOUS_FEATURES, PREDICTION], categorical_columns=list(DISCRETE_FEATURES)
    )
    threshold = monitor.feature_threshold
    report = Report(
        [
            DataDriftPreset(
                columns=list(FEATURES),
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
    columns = [*FEATURES, PREDICTION]
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    return _read_snapshot(snapshot)


def _read_snapshot(snapshot: Any) -> Comparison:
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
        features=[features[name] for name in FEATURES],
        drifted=int(count["count"]),
        share=float(count["share"]),
        input_drift=bool(count["detected"]),
        prediction=prediction,
    )


def performance(labelled: pd.DataFrame | None, model: ModelInfo, monitor: MonitorParams) -> dict[str, Any] | None:
    """RMSE and MAE of the labelled rows, against the model's test RMSE plus the allowed increase."""
    if labelled is None:
        return None
    rows = len(labelled)
    error = labelled[PREDICTION].to_numpy(np.float64) - labelled["actual"].to_numpy(np.float64)
    rmse = float(np.sqrt(np.mean(error**2))) if rows else None
    mae = float(np.mean(np.abs(error))) if rows else None
    test_rmse = model.test_metrics.get("rmse")
    allowed = test_rmse * (1 + monitor.max_error_increase) if test_rmse is not None else None
    if test_rmse is None:
        judgement = "not judged: the model's test RMSE is unknown"
    elif rows < monitor.min_labelled_rows:
        judgement = (
            f"not judged: {rows} labelled rows, fewer than monitor.min_labelled_rows ({monitor.min_labelled_rows})"
        )
    else:
        judgement = "judged"
    judged = judgement == "judged"
    return {
        "labelled_rows": rows,
        "rmse": rmse,
        "mae": mae,
        "test_rmse": test_rmse,
        "test_mae": model.test_metrics.get("mae"),
        "allowed_rmse": allowed,
        "judged": judged,
        "judgement": judgement,
        "worse_than_allowed": bool(judged and rmse is not None and allowed is not None and rmse > allowed),
    }


# --- the result -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    """What every result says: where it looked and with which settings."""

    environment: str
    sink: str
    window: Window
    monitor: MonitorParams

    def as_dict(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "sink": self.sink,
            "window": self.window.as_dict(),
            "thresholds": self.monitor.model_dump(exclude={"probe_budget_ms"}),
        }


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
            f"input drift: {comparison.drifted} of {len(FEATURES)} features drifted ({comparison.share:.0%}, "
            f"threshold {monitor.drift_share:.0%})"
        )
    prediction = comparison.prediction
    if prediction["drifted"]:
        reasons.append(f"prediction drift: distance {prediction['score']:.3f} >= {prediction['threshold']:g}")
    if judged and judged["worse_than_allowed"]:
        reasons.append(
            f"labelled RMSE {judged['rmse']:.1f} > allowed {judged['allowed_rmse']:.1f} (test RMSE "
            f"{judged['test_rmse']:.1f} + {monitor.max_error_increase:.0%})"
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
            "features": len(FEATURES),
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
    quality_rows = quality(traffic, reference.frame)
    judged = performance(join_labels(traffic, labels) if labels is not None else None, reference.model, context.monitor)
    compared, _ = sample(traffic.table, context.monitor.max_rows)
    current = current_frame(compared, reference.frame)
    comparison = compare(reference.frame, current, context.monitor)
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


# --- writing ----------------------------------------------------------------------------------------------------


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


# --- the Markdown summary --------------------------------------------------------------------------------------


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


def _prediction_table(outcome: dict[str, Any]) -> list[str]:
    row = outcome["prediction_drift"]
    return [
        "### Prediction drift",
        "",
        "| method | distance | threshold | drifted | mean prediction (window) | mean prediction (reference) |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
        f"| {METHOD_NAMES.get(row['method'], row['method'])} | {row['score']:.3f} | {row['threshold']:g} | "
        f"{'**yes**' if row['drifted'] else 'no'} | {row['current_mean']:.1f} | {row['reference_mean']:.1f} |",
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
        return "unknown" if value is None else f"{value:.1f}"

    verdict = "not judged"
    if perf["judged"]:
        verdict = "**WORSE than allowed**" if perf["worse_than_allowed"] else "within the allowed error"
    return [
        f"### Performance on labelled records: {verdict}",
        "",
        "| | rows | RMSE | MAE |",
        "| --- | ---: | ---: | ---: |",
        f"| labelled records in the window | {perf['labelled_rows']:,} | {number(perf['rmse'])} "
        f"| {number(perf['mae'])} |",
        f"| the model's test set | | {number(perf['test_rmse'])} | {number(perf['test_mae'])} |",
        "",
        f"Allowed RMSE: {number(perf['allowed_rmse'])} "
        f"(test RMSE + {outcome['thresholds']['max_error_increase']:.0%}); {perf['judgement']}.",
    ]
