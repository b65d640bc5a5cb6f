import math

import pandas as pd
import pytest

from forkcast.config import Params
from forkcast.data.declaration import Frequency
from forkcast.data.prepare import Splits
from forkcast.model.evaluate import cycle_position, evaluate
from forkcast.model.metrics import regression_metrics, seasonal_baseline
from forkcast.model.train import TrainedModel


def test_regression_metrics_on_a_hand_computed_case() -> None:
    metrics = regression_metrics(pd.Series([1.0, 2.0, 3.0, 4.0]), pd.Series([2.0, 2.0, 3.0, 2.0]))
    assert metrics["mae"] == pytest.approx(3 / 4)
    assert metrics["rmse"] == pytest.approx(math.sqrt(5 / 4), abs=1e-4)  # rounded to 4 decimals
    assert metrics["r2"] == pytest.approx(1 - 5 / 5)


def test_metrics_refuse_an_empty_split() -> None:
    with pytest.raises(ValueError, match="empty"):
        regression_metrics(pd.Series([], dtype=float), pd.Series([], dtype=float))


def test_the_baseline_is_the_training_mean_by_hour_and_kind_of_day() -> None:
    train_frame = pd.DataFrame({"workingday": [1, 1, 0, 1], "hr": [8, 8, 8, 9], "bikers": [100, 300, 50, 40]})
    test_frame = pd.DataFrame({"workingday": [1, 0, 1, 0], "hr": [8, 8, 9, 23]})
    baseline = seasonal_baseline(train_frame, "bikers", test_frame, ["workingday", "hr"])
    # (0, 23) never occurs in training: falls back to the overall training mean.
    assert baseline.tolist() == [200.0, 50.0, 40.0, 122.5]


@pytest.mark.datasets
def test_the_model_clearly_beats_the_seasonal_baseline(trained: TrainedModel, splits: Splits, params: Params) -> None:
    dataset = params.dataset
    evaluation = evaluate(trained.pipeline, splits.train, splits.test, dataset.inputs(), dataset.seasonal_keys)
    metrics = evaluation.metrics
    assert metrics["model"]["rmse"] < 0.9 * metrics["baseline"]["rmse"]
    assert metrics["model"]["r2"] > metrics["baseline"]["r2"]
    assert metrics["test_rows"] == len(splits.test)
    expected = seasonal_baseline(splits.train, dataset.target, splits.test, dataset.seasonal_keys)
    assert evaluation.predictions["baseline"].tolist() == expected.round(4).tolist()
    by_cycle = evaluation.error_by("cycle_position")  # one point per period of the natural cycle
    assert len(by_cycle) == dataset.time.frequency.rows_per_cycle
    assert by_cycle["model_mae"].mean() < by_cycle["baseline_mae"].mean()
    assert set(evaluation.error_by("month")["month"]) == set(splits.test["timestamp"].dt.month)


def test_the_cycle_position_reads_as_hours_of_the_day_or_weekdays() -> None:
    stamps = pd.Series(pd.to_datetime(["2014-06-02 08:30", "2014-06-02 23:00"]))  # a Monday
    assert cycle_position(stamps, Frequency.parse("half-hour")).tolist() == [8.5, 23.0]
    assert cycle_position(stamps, Frequency.parse("hour")).tolist() == [8.0, 23.0]
    assert cycle_position(stamps, Frequency.parse("day")).tolist() == [0.0, 0.0]
