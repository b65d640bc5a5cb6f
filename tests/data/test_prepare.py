"""The prepare stage: the model's inputs from the declaration, and a chronological split by whole days."""

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from forkcast.config import Params, SplitParams
from forkcast.data import declaration
from forkcast.data.prepare import (
    Splits,
    UnusableDataError,
    build_features,
    drop_failing_rows,
    read_table,
    split_by_time,
    write_splits,
)


@pytest.mark.datasets
class TestEveryDataset:
    def test_the_splits_follow_each_other_in_time_without_overlap(self, splits: Splits) -> None:
        assert splits.train["timestamp"].max() < splits.validation["timestamp"].min()
        assert splits.validation["timestamp"].max() < splits.test["timestamp"].min()

    def test_the_splits_are_whole_days_in_the_configured_proportions(self, splits: Splits) -> None:
        days = {name: frame["timestamp"].dt.normalize().nunique() for name, frame in splits.items()}
        total = sum(days.values())
        assert days["test"] == round(total * 0.15)
        assert days["validation"] == round(total * 0.15)
        boundaries = [frame["timestamp"].dt.normalize() for _, frame in splits.items()]
        assert not set(boundaries[0]) & set(boundaries[1])  # no day is cut in two
        assert not set(boundaries[1]) & set(boundaries[2])

    def test_every_row_lands_in_exactly_one_split(self, splits: Splits, raw_text: pd.DataFrame) -> None:
        assert sum(len(frame) for _, frame in splits.items()) == len(raw_text)

    def test_only_the_features_and_the_target_reach_the_prepared_data(self, splits: Splits, params: Params) -> None:
        dataset = params.dataset
        for _, frame in splits.items():
            assert list(frame.columns) == ["timestamp", *dataset.feature_names, dataset.target]
            assert not set(dataset.columns_with("leaking")) & set(frame.columns)

    def test_the_timestamp_and_the_calendar_features_come_from_the_declared_time(
        self, splits: Splits, raw_text: pd.DataFrame, params: Params
    ) -> None:
        dataset = params.dataset
        step = pd.Timedelta(minutes=dataset.time.frequency.minutes)
        assert (splits.train["timestamp"].diff().dropna() >= step).all()  # in time order, on the grid
        for name, attribute in dataset.calendar.items():
            stamps = splits.train["timestamp"]
            expected = {"month": stamps.dt.month, "weekday": stamps.dt.weekday, "hour": stamps.dt.hour,
                        "minute_of_day": stamps.dt.hour * 60 + stamps.dt.minute}[attribute]  # fmt: skip
            assert (splits.train[name] == expected).all()

    def test_the_input_contract_is_written_beside_the_splits(
        self, splits: Splits, params: Params, tmp_path: Path
    ) -> None:
        files = {name: tmp_path / f"{name}.parquet" for name in ("train", "validation", "test")}
        write_splits(splits, files, params.dataset.inputs(), tmp_path / "inputs.json")
        assert declaration.read_inputs(tmp_path / "inputs.json") == params.dataset.inputs()
        assert json.loads((tmp_path / "inputs.json").read_text())["target"]["name"] == params.dataset.target
        assert pd.read_parquet(files["test"]).equals(splits.test)

    def test_too_little_data_to_split_is_a_clear_error(self, splits: Splits) -> None:
        first_day = splits.train["timestamp"].min().normalize()
        two_days = splits.train[splits.train["timestamp"] < first_day + pd.Timedelta(days=2)]
        with pytest.raises(ValueError, match="at least 3 days"):
            split_by_time(two_days, SplitParams())

    def test_rows_the_validation_tolerated_are_dropped_before_training(
        self, raw_text: pd.DataFrame, params: Params
    ) -> None:
        dataset = params.dataset
        column = next(n for n, c in dataset.file_columns.items() if c.type == "float" and c.max is not None)
        whole = next(n for n, c in dataset.file_columns.items() if c.type == "int" and c.role == "feature")
        table = raw_text.copy()
        table.loc[5, column] = "1000"
        table.loc[6, column] = None
        table.loc[9, whole] = f"{table.loc[9, whole]}.0"  # a whole number written as a float is still fine
        typed = pd.read_csv(_csv(table))
        kept, dropped = drop_failing_rows(typed, dataset)
        assert dropped == 2
        assert len(kept) == len(table) - 2
        assert kept[whole].dtype == "int64"

    def test_a_missing_column_is_a_problem_no_row_filter_fixes(self, raw_text: pd.DataFrame, params: Params) -> None:
        column = next(n for n, c in params.dataset.file_columns.items() if c.role == "feature")
        typed = pd.read_csv(_csv(raw_text.drop(columns=[column])))
        with pytest.raises(UnusableDataError) as error:
            drop_failing_rows(typed, params.dataset)
        assert f"column '{column}' is missing" in str(error.value)
        assert "Index(" not in str(error.value)


def test_a_hook_adds_the_features_that_need_code(raw_text: pd.DataFrame, params: Params) -> None:
    source = params.dataset.model_dump()
    source["columns"]["daytime"] = {"role": "feature", "type": "int", "categories": [0, 1], "source": "hook"}
    source["hook"] = "forkcast.data.hooks:daytime"
    dataset = declaration.parse(source)
    assert "daytime" in dataset.feature_names
    assert "daytime" not in dataset.file_columns  # not expected in the file
    prepared = build_features(drop_failing_rows(pd.read_csv(_csv(raw_text)), dataset)[0], dataset)
    hours = prepared["timestamp"].dt.hour
    assert (prepared["daytime"] == ((hours >= 7) & (hours < 19)).astype(int)).all()


def test_a_hook_that_cannot_be_loaded_or_returns_the_wrong_thing_is_named(
    raw_text: pd.DataFrame, params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forkcast.data import hooks

    def crashes(table: pd.DataFrame) -> pd.DataFrame:
        return table["no such column"].to_frame()

    monkeypatch.setattr(hooks, "crashes", crashes, raising=False)
    monkeypatch.setattr(hooks, "a_number", lambda table: 3, raising=False)
    monkeypatch.setattr(hooks, "too_short", lambda table: table.head(1).assign(daytime=1), raising=False)
    source = params.dataset.model_dump()
    source["columns"]["daytime"] = {"role": "feature", "type": "int", "categories": [0, 1], "source": "hook"}
    typed = drop_failing_rows(pd.read_csv(_csv(raw_text.head(48))), params.dataset)[0]
    for hook, words in (
        ("nothing_here", "cannot load the hook forkcast.data.hooks:nothing_here"),
        ("crashes", "the hook forkcast.data.hooks:crashes failed: KeyError"),
        ("a_number", "must return a DataFrame, not int"),
        ("too_short", "it returned 1 rows for 48"),
    ):
        dataset = declaration.parse({**source, "hook": f"forkcast.data.hooks:{hook}"})
        with pytest.raises(UnusableDataError, match=words):
            build_features(typed, dataset)
    with pytest.raises(declaration.DeclarationError, match=r"must name a function of src/forkcast/data/hooks\.py"):
        declaration.parse({**source, "hook": "os:system"})


def _csv(table: pd.DataFrame) -> io.StringIO:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    buffer.seek(0)
    return buffer


def test_text_codes_stay_text_as_the_validation_reads_them(tmp_path: Path) -> None:
    """Store "01" is the category "01", not the number 1, in prepare as in validate."""
    dataset = declaration.parse(
        {
            "name": "stores",
            "file": "data/stores.csv",
            "time": {"column": "date", "format": "%Y-%m-%d", "frequency": "day"},
            "key": ["store", "date"],
            "columns": {
                "date": {"role": "time", "type": "str"},
                "store": {"role": "feature", "type": "str", "categories": ["01", "02"]},
                "sold": {"role": "target", "type": "int", "min": 0, "unit": "units"},
            },
            "calendar": ["weekday"],
            "seasonal_keys": ["store", "weekday"],
        }
    )
    path = tmp_path / "stores.csv"
    days = pd.date_range("2014-01-01", periods=5).strftime("%Y-%m-%d")
    pd.DataFrame({"date": [*days, *days], "store": ["01"] * 5 + ["02"] * 5, "sold": range(10)}).to_csv(
        path, index=False
    )
    kept, dropped = drop_failing_rows(read_table(path, dataset), dataset)
    assert (len(kept), dropped) == (10, 0)
    assert set(build_features(kept, dataset)["store"]) == {"01", "02"}
    broken = pd.read_csv(path, dtype=str).assign(store="03")
    broken.to_csv(path, index=False)
    with pytest.raises(
        UnusableDataError, match=r"every one of the 10 rows fails a check \(rows.one_per_period, store.isin\)"
    ):
        drop_failing_rows(read_table(path, dataset), dataset)
