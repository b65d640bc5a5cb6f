"""The model: one scikit-learn Pipeline from the declared features to the predicted target.

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
from forkcast.data.declaration import Inputs, Target


def build_regressor(params: TrainParams) -> HistGradientBoostingRegressor | RandomForestRegressor:
    hyperparameters: dict[str, Any] = params.hyperparameters()
    if params.model == "hist_gradient_boosting":
        return HistGradientBoostingRegressor(random_state=params.seed, **hyperparameters)
    return RandomForestRegressor(random_state=params.seed, n_jobs=params.threads, **hyperparameters)


def build_pipeline(params: TrainParams, inputs: Inputs) -> Pipeline:
    """Text features one-hot encoded, numbers as they are, then the regressor."""
    steps = (
        [("categorical", OneHotEncoder(handle_unknown="ignore"), list(inputs.categorical))]
        if inputs.categorical
        else []
    )
    steps += [("numeric", "passthrough", list(inputs.numeric))] if inputs.numeric else []
    return Pipeline([("preprocess", ColumnTransformer(steps)), ("regressor", build_regressor(params))])


def fit(params: TrainParams, train: pd.DataFrame, inputs: Inputs) -> Pipeline:
    pipeline = build_pipeline(params, inputs)
    with threadpool_limits(limits=params.threads):  # OpenMP threads of HistGradientBoosting
        pipeline.fit(train[list(inputs.names)], train[inputs.target.name])
    return pipeline


def predict(pipeline: Pipeline, frame: pd.DataFrame, target: Target) -> pd.Series:
    """Predicted target per row, within the target's declared range (demand is never negative)."""
    predictions = target.clip(pipeline.predict(frame[list(pipeline.feature_names_in_)]))
    return pd.Series(predictions, index=frame.index, name="prediction")
