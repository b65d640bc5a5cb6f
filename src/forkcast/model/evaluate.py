"""The evaluate stage: test-set metrics against the naive seasonal baseline, and plot data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.pipeline import Pipeline

from forkcast import atomic
from forkcast.model.estimator import predict
from forkcast.model.metrics import regression_metrics, seasonal_baseline


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # timestamp, hr, month, actual, predicted, baseline

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
        return errors.groupby(key, as_index=False).mean().round(3)


def evaluate(pipeline: Pipeline, train: pd.DataFrame, test: pd.DataFrame, target: str) -> Evaluation:
    predicted = predict(pipeline, test)
    baseline = seasonal_baseline(train, target, test)
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
            "hr": test["hr"],
            "month": test["month"],
            "actual": test[target],
            "predicted": predicted.round(2),
            "baseline": baseline.round(2),
        }
    )
    return Evaluation(metrics, predictions)


def save(evaluation: Evaluation, metrics_path: Path, predictions_path: Path, by_hour: Path, by_month: Path) -> None:
    atomic.write_atomic(predictions_path, lambda tmp: evaluation.predictions.to_csv(tmp, index=False))
    atomic.write_atomic(by_hour, lambda tmp: evaluation.error_by("hr").to_csv(tmp, index=False))
    atomic.write_atomic(by_month, lambda tmp: evaluation.error_by("month").to_csv(tmp, index=False))
    atomic.write_json(metrics_path, evaluation.metrics)  # last: its presence means the stage finished
