import io

import pandas as pd
import pytest

from forkcast.config import SplitParams
from forkcast.data.features import FEATURES
from forkcast.data.prepare import Splits, split_by_time
from forkcast.data.schema import LEAKING_COLUMNS


def test_the_splits_follow_each_other_in_time_without_overlap(splits: Splits) -> None:
    assert splits.train["timestamp"].max() < splits.validation["timestamp"].min()
    assert splits.validation["timestamp"].max() < splits.test["timestamp"].min()


def test_the_splits_are_whole_days_in_the_configured_proportions(splits: Splits) -> None:
    days = {name: frame["timestamp"].dt.normalize().nunique() for name, frame in splits.items()}
    total = sum(days.values())
    assert days["test"] == round(total * 0.15)
    assert days["validation"] == round(total * 0.15)
    # No day is cut in two.
    boundaries = [frame["timestamp"].dt.normalize() for _, frame in splits.items()]
    assert not set(boundaries[0]) & set(boundaries[1])
    assert not set(boundaries[1]) & set(boundaries[2])


def test_every_row_lands_in_exactly_one_split(splits: Splits, raw_text: pd.DataFrame) -> None:
    assert sum(len(frame) for _, frame in splits.items()) == len(raw_text)


def test_leaking_columns_never_reach_the_prepared_data(splits: Splits) -> None:
    for _, frame in splits.items():
        assert not set(LEAKING_COLUMNS) & set(frame.columns)
        assert list(frame.columns) == ["timestamp", *FEATURES, "bikers"]


def test_the_timestamp_comes_from_day_and_hour(splits: Splits) -> None:
    first = splits.train.iloc[0]
    assert first["timestamp"] == pd.Timestamp("2011-01-01 00:00")
    assert splits.test["timestamp"].max() == pd.Timestamp("2011-12-31 23:00")
    assert (splits.train["timestamp"].dt.month == splits.train["month"]).all()


def test_too_little_data_to_split_is_a_clear_error(splits: Splits) -> None:
    two_days = splits.train[splits.train["timestamp"] < pd.Timestamp("2011-01-03")]
    with pytest.raises(ValueError, match="at least 3 days"):
        split_by_time(two_days, SplitParams())


def test_rows_the_validation_tolerated_are_dropped_before_training(raw_text: pd.DataFrame) -> None:
    from forkcast.data.prepare import UnusableDataError, drop_failing_rows

    table = raw_text.copy()
    table.loc[5, "hum"] = "1.7"
    table.loc[6, "windspeed"] = None
    table.loc[9, "holiday"] = "0.0"  # a whole number written as a float is still fine
    typed = pd.read_csv(_csv(table))
    kept, dropped = drop_failing_rows(typed)
    assert dropped == 2
    assert len(kept) == len(table) - 2
    assert kept["holiday"].dtype == "int64"
    with pytest.raises(UnusableDataError, match="hum"):
        drop_failing_rows(typed.drop(columns=["hum"]))


def _csv(table: pd.DataFrame) -> io.StringIO:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    buffer.seek(0)
    return buffer
