"""Training, the ONNX export, and behaviour the model must show on the real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from forkcast.config import Params
from forkcast.data.prepare import Splits
from forkcast.model.estimator import predict
from forkcast.model.onnx import predict_onnx
from forkcast.model.train import TrainedModel, load_pipeline, save, train


def test_metadata_records_model_data_and_lineage(trained: TrainedModel, splits: Splits) -> None:
    metadata = trained.metadata
    assert metadata["model_type"] == "hist_gradient_boosting"
    assert metadata["hyperparameters"]["max_iter"] == 100
    assert metadata["data_hash"] == "abc.dir"
    assert metadata["splits"]["test"]["rows"] == len(splits.test)
    assert metadata["splits"]["train"]["start"] == "2011-01-01T00:00:00"
    assert set(metadata["metrics"]["validation"]) == {"rmse", "mae", "r2"}
    assert {"scikit-learn", "pandas", "mlflow"} <= set(metadata["libraries"])
    assert metadata["git_commit"]  # this checkout is a git repository


def test_the_onnx_export_matches_scikit_learn_on_the_test_set(trained: TrainedModel, splits: Splits) -> None:
    onnx_predictions = predict_onnx(trained.onnx, splits.test)
    expected = trained.pipeline.predict(splits.test[trained.metadata["features"]])
    np.testing.assert_allclose(onnx_predictions, expected, atol=0.01)
    assert trained.metadata["onnx_max_abs_difference_on_test"] < 0.01


def test_saved_artifacts_load_back_identically(trained: TrainedModel, splits: Splits, tmp_path: Path) -> None:
    save(trained, tmp_path / "model.joblib", tmp_path / "model.onnx", tmp_path / "metadata.json")
    loaded = load_pipeline(tmp_path / "model.joblib")
    pd.testing.assert_series_equal(predict(loaded, splits.test), predict(trained.pipeline, splits.test))
    assert json.loads((tmp_path / "metadata.json").read_text())["model_type"] == "hist_gradient_boosting"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_the_random_forest_family_trains_and_exports(splits: Splits) -> None:
    params = Params.model_validate({"train": {"model": "random_forest", "random_forest": {"n_estimators": 10}}})
    model = train(params, splits.as_dict(), data_hash=None)
    assert model.metadata["estimator"] == "RandomForestRegressor"
    assert model.metadata["onnx_max_abs_difference_on_test"] < params.train.onnx_tolerance


# Behaviour: the model must have learned what everyone knows about bike demand.


def scenario(pipeline: Pipeline, splits: Splits, **changes: object) -> float:
    frame = splits.test.assign(**changes)
    return float(predict(pipeline, frame).mean())


def test_rain_lowers_demand(trained: TrainedModel, splits: Splits) -> None:
    clear = scenario(trained.pipeline, splits, weathersit="clear")
    rain = scenario(trained.pipeline, splits, weathersit="light rain/snow")
    assert rain < 0.8 * clear


def test_the_working_day_rush_hour_beats_the_middle_of_the_night(trained: TrainedModel, splits: Splits) -> None:
    rush = scenario(trained.pipeline, splits, hr=8, workingday=1, holiday=0, weekday=2)
    night = scenario(trained.pipeline, splits, hr=3, workingday=1, holiday=0, weekday=2)
    assert rush > 5 * night


def test_warmer_hours_see_more_riders(trained: TrainedModel, splits: Splits) -> None:
    cold = scenario(trained.pipeline, splits, temp=0.2, atemp=0.2)
    mild = scenario(trained.pipeline, splits, temp=0.6, atemp=0.6)
    assert mild > cold


def test_predictions_are_never_negative(trained: TrainedModel, splits: Splits) -> None:
    extreme = splits.test.assign(hr=4, temp=0.0, atemp=0.0, hum=1.0, windspeed=1.0, weathersit="heavy rain/snow")
    assert (predict(trained.pipeline, extreme) >= 0).all()


def test_an_unseen_weather_category_still_predicts(trained: TrainedModel, splits: Splits) -> None:
    # The service rejects unknown categories; the pipeline itself must not crash on them.
    frame = splits.test.head(3).assign(weathersit="fog")
    assert len(predict(trained.pipeline, frame)) == 3


def test_thread_count_and_early_stopping_are_explicit() -> None:
    from forkcast.model.estimator import build_regressor

    forest = build_regressor(Params.model_validate({"train": {"model": "random_forest", "threads": 2}}).train)
    assert forest.n_jobs == 2
    boosting = build_regressor(Params().train)
    assert boosting.early_stopping is False  # scikit-learn's "auto" would hold out 10% above 10k rows
