"""Regression metrics and the naive seasonal baseline every model must beat."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def regression_metrics(actual: pd.Series, predicted: pd.Series | np.ndarray) -> dict[str, float]:
    if len(actual) == 0:
        raise ValueError("cannot compute metrics on an empty split")
    metrics = {
        "rmse": float(np.sqrt(mean_squared_error(actual, predicted))),
        "mae": float(mean_absolute_error(actual, predicted)),
        "r2": float(r2_score(actual, predicted)) if len(actual) > 1 else float("nan"),
    }
    # Four decimals: enough for any gate, and `dvc metrics diff` stays readable.
    return {name: round(value, 4) for name, value in metrics.items()}


def seasonal_baseline(train: pd.DataFrame, target: str, frame: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """The mean training target of the rows with the same values of `keys` (the declared seasonal keys: the same
    hour on the same kind of day, say); the overall training mean where training never saw those values."""
    profile = train.groupby(list(keys))[target].mean().rename("baseline")
    joined = frame[list(keys)].join(profile, on=list(keys))["baseline"]
    return joined.fillna(train[target].mean())
