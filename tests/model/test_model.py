"""Training, the ONNX export, and behaviour the model must show on the real data of each example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from forkcast.config import Params, RandomForestParams, TrainParams
from forkcast.data.declaration import Inputs
from forkcast.data.prepare import Splits
from forkcast.model.estimator import predict
from forkcast.model.onnx import gap, predict_onnx
from forkcast.model.train import TrainedModel, load_pipeline, save, train

from ..conftest import Example


@pytest.mark.datasets
class TestEveryDataset:
    def test_metadata_records_model_data_lineage_and_inputs(
        self, trained: TrainedModel, splits: Splits, params: Params
    ) -> None:
        metadata = trained.metadata
        assert metadata["model_type"] == "hist_gradient_boosting"
        assert metadata["hyperparameters"]["max_iter"] == 100
        assert metadata["data_hash"] == "abc.dir"
        assert metadata["splits"]["test"]["rows"] == len(splits.test)
        assert metadata["splits"]["train"]["start"] == splits.train["timestamp"].min().isoformat()
        assert set(metadata["metrics"]["validation"]) == {"rmse", "mae", "r2"}
        assert {"scikit-learn", "pandas", "mlflow"} <= set(metadata["libraries"])
        assert metadata["git_commit"]  # this checkout is a git repository
        assert Inputs.model_validate(metadata["inputs"]) == params.dataset.inputs()  # the contract travels with it
        assert metadata["features"] == list(params.dataset.feature_names)

    def test_the_onnx_export_matches_scikit_learn_on_the_test_set(
        self, trained: TrainedModel, splits: Splits, params: Params
    ) -> None:
        onnx_predictions = predict_onnx(trained.onnx, splits.test)
        expected = trained.pipeline.predict(splits.test[trained.metadata["features"]])
        assert gap(onnx_predictions, expected) == trained.metadata["onnx_max_gap_on_test"]
        assert trained.metadata["onnx_max_gap_on_test"] < params.train.onnx_tolerance
        np.testing.assert_allclose(onnx_predictions, expected, rtol=params.train.onnx_tolerance, atol=0.001)

    def test_saved_artifacts_load_back_identically(
        self, trained: TrainedModel, splits: Splits, params: Params, tmp_path: Path
    ) -> None:
        target = params.dataset.inputs().target
        save(trained, tmp_path / "model.joblib", tmp_path / "model.onnx", tmp_path / "metadata.json")
        loaded = load_pipeline(tmp_path / "model.joblib")
        pd.testing.assert_series_equal(
            predict(loaded, splits.test, target), predict(trained.pipeline, splits.test, target)
        )
        assert json.loads((tmp_path / "metadata.json").read_text())["model_type"] == "hist_gradient_boosting"
        assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind

    def test_the_random_forest_family_trains_and_exports(self, splits: Splits, params: Params) -> None:
        forest = params.model_copy(
            update={
                "train": params.train.model_copy(
                    update={"model": "random_forest", "random_forest": RandomForestParams(n_estimators=10)}
                )
            }
        )
        model = train(forest, splits.as_dict(), params.dataset.inputs(), data_hash=None)
        assert model.metadata["estimator"] == "RandomForestRegressor"
        assert model.metadata["onnx_max_gap_on_test"] < params.train.onnx_tolerance

    def test_predictions_stay_within_the_targets_declared_range(
        self, trained: TrainedModel, splits: Splits, params: Params
    ) -> None:
        target = params.dataset.inputs().target
        extreme = splits.test.copy()
        for feature in params.dataset.features:  # every input at the edge of what it may be
            if feature.type != "str":
                extreme[feature.name] = feature.max if feature.max is not None else feature.min
        predicted = predict(trained.pipeline, extreme, target)
        assert target.min is not None
        assert (predicted >= target.min).all()

    def test_a_target_that_can_be_large_is_checked_relative_to_its_size(self, trained: TrainedModel) -> None:
        # ONNX scores in float32: a gap of 0.5 on a value of a million is a relative 5e-7, within any tolerance.
        assert gap([1_000_000.5], [1_000_000.0]) == pytest.approx(5e-7)
        assert gap([0.5], [0.0]) == 0.5  # below 1, the difference itself


# Behaviour: the bike model must have learned what everyone knows about bike demand. These check the example's
# data, not the template: a forker replaces them with what is known about theirs.


def scenario(pipeline: Pipeline, splits: Splits, params: Params, **changes: object) -> float:
    frame = splits.test.assign(**changes)
    return float(predict(pipeline, frame, params.dataset.inputs().target).mean())


@pytest.mark.bikes
def test_rain_lowers_demand(trained: TrainedModel, splits: Splits, params: Params) -> None:
    clear = scenario(trained.pipeline, splits, params, weathersit="clear")
    rain = scenario(trained.pipeline, splits, params, weathersit="light rain/snow")
    assert rain < 0.8 * clear


@pytest.mark.bikes
def test_the_working_day_rush_hour_beats_the_middle_of_the_night(
    trained: TrainedModel, splits: Splits, params: Params
) -> None:
    rush = scenario(trained.pipeline, splits, params, hr=8, workingday=1, holiday=0, weekday=2)
    night = scenario(trained.pipeline, splits, params, hr=3, workingday=1, holiday=0, weekday=2)
    assert rush > 5 * night


@pytest.mark.bikes
def test_warmer_hours_see_more_riders(trained: TrainedModel, splits: Splits, params: Params) -> None:
    cold = scenario(trained.pipeline, splits, params, temp=0.2, atemp=0.2)
    mild = scenario(trained.pipeline, splits, params, temp=0.6, atemp=0.6)
    assert mild > cold


@pytest.mark.bikes
def test_an_unseen_weather_category_still_predicts(trained: TrainedModel, splits: Splits, params: Params) -> None:
    # The service rejects unknown categories; the pipeline itself must not crash on them.
    frame = splits.test.head(3).assign(weathersit="fog")
    assert len(predict(trained.pipeline, frame, params.dataset.inputs().target)) == 3


@pytest.mark.parametrize("example", ["electricity"], indirect=True)
def test_the_electricity_model_knows_demand_peaks_in_the_day_and_on_working_days(
    example: Example, trained: TrainedModel, splits: Splits, params: Params
) -> None:
    """The second example's own behaviour, on its data only."""
    working_evening = scenario(trained.pipeline, splits, params, minute_of_day=18 * 60, WorkDay=1, weekday=2)
    night = scenario(trained.pipeline, splits, params, minute_of_day=3 * 60, WorkDay=1, weekday=2)
    sunday = scenario(trained.pipeline, splits, params, minute_of_day=18 * 60, WorkDay=0, weekday=6)
    assert working_evening > 1.2 * night
    assert working_evening > sunday


def test_thread_count_and_early_stopping_are_explicit(params: Params) -> None:
    from forkcast.model.estimator import build_regressor

    forest = build_regressor(TrainParams(model="random_forest", threads=2))
    assert forest.n_jobs == 2
    boosting = build_regressor(params.train)
    assert boosting.early_stopping is False  # scikit-learn's "auto" would hold out 10% above 10k rows
