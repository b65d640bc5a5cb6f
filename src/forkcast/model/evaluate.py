"""The evaluate stage: test-set metrics against the naive seasonal baseline, and plot data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.pipeline import Pipeline

from forkcast import atomic
from forkcast.data import calendar
from forkcast.data.declaration import Frequency, Inputs
from forkcast.model.estimator import predict
from forkcast.model.metrics import regression_metrics, seasonal_baseline


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # timestamp, cycle_position, month, actual, predicted, baseline

    def error_by(self, key: str) -> pd.DataFrame:
        """Mean absolute error of the model and the baseline per value of `key`."""
        frame = self.predictions
        errors = pd.DataFrame(
            {
                key: frame[key],
                "model_mae": (frame["predicted"] - frame["actual"]).abs(),
                "baseline_mae": (frame["baseline"] - frame["actual"]).abs(),
            }
        )
        return errors.groupby(key, as_index=False).mean().round(4)


def evaluate(
    pipeline: Pipeline, train: pd.DataFrame, test: pd.DataFrame, inputs: Inputs, seasonal_keys: Sequence[str]
) -> Evaluation:
    """The model and the naive seasonal baseline (mean target by `seasonal_keys` in training) on the test split."""
    target = inputs.target.name
    predicted = predict(pipeline, test, inputs.target)
    baseline = seasonal_baseline(train, target, test, seasonal_keys)
    model_metrics = regression_metrics(test[target], predicted)
    baseline_metrics = regression_metrics(test[target], baseline)
    metrics = {
        "test_rows": len(test),
        "model": model_metrics,
        "baseline": baseline_metrics,
        # Positive means the model is better than the baseline by that share.
        "rmse_improvement_over_baseline": round(1.0 - model_metrics["rmse"] / baseline_metrics["rmse"], 4),
    }
    predictions = pd.DataFrame(
        {
            "timestamp": test["timestamp"].dt.strftime("%Y-%m-%dT%H:%M"),
            "cycle_position": cycle_position(test["timestamp"], inputs.frequency),
            "month": test["timestamp"].dt.month,
            "actual": test[target],
            "predicted": predicted.round(4),
            "baseline": baseline.round(4),
        }
    )
    return Evaluation(metrics, predictions)


def cycle_position(stamps: pd.Series, frequency: Frequency) -> pd.Series:
    """Where in its natural cycle each time falls: the hour of the day (8.5 for 08:30), the weekday, the week."""
    where = calendar.attribute(stamps, frequency.cycle_position).astype("float64")
    return where / 60 if frequency.cycle_position == "minute_of_day" else where


def save(evaluation: Evaluation, metrics_path: Path, predictions_path: Path, by_cycle: Path, by_month: Path) -> None:
    atomic.write_atomic(predictions_path, lambda tmp: evaluation.predictions.to_csv(tmp, index=False))
    atomic.write_atomic(by_cycle, lambda tmp: evaluation.error_by("cycle_position").to_csv(tmp, index=False))
    atomic.write_atomic(by_month, lambda tmp: evaluation.error_by("month").to_csv(tmp, index=False))
    atomic.write_json(metrics_path, evaluation.metrics)  # last: its presence means the stage finished
