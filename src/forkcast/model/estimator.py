"""The model: one scikit-learn Pipeline from raw feature columns to predicted rentals.

The whole fitted pipeline (preprocessing included) is the artifact that gets
tracked, exported and served, so training and serving cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from threadpoolctl import threadpool_limits

from forkcast.config import TrainParams
from forkcast.data.features import CATEGORICAL_FEATURES, FEATURES, NUMERIC_FEATURES


def build_regressor(params: TrainParams) -> HistGradientBoostingRegressor | RandomForestRegressor:
    hyperparameters: dict[str, Any] = params.hyperparameters()
    if params.model == "hist_gradient_boosting":
        return HistGradientBoostingRegressor(random_state=params.seed, **hyperparameters)
    return RandomForestRegressor(random_state=params.seed, n_jobs=params.threads, **hyperparameters)


def build_pipeline(params: TrainParams) -> Pipeline:
    preprocess = ColumnTransformer(
        [
            ("categorical", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL_FEATURES)),
            ("numeric", "passthrough", list(NUMERIC_FEATURES)),
        ]
    )
    return Pipeline([("preprocess", preprocess), ("regressor", build_regressor(params))])


def fit(params: TrainParams, train: pd.DataFrame, target: str) -> Pipeline:
    pipeline = build_pipeline(params)
    with threadpool_limits(limits=params.threads):  # OpenMP threads of HistGradientBoosting
        pipeline.fit(train[list(FEATURES)], train[target])
    return pipeline


def predict(pipeline: Pipeline, frame: pd.DataFrame) -> pd.Series:
    """Predicted rentals per hour; demand is never negative."""
    predictions = pipeline.predict(frame[list(FEATURES)]).clip(min=0.0)
    return pd.Series(predictions, index=frame.index, name="prediction")
