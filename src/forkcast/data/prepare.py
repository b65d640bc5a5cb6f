"""The prepare stage: typed features and a chronological train/validation/test split.

The split is by whole days in time order, so the model is always evaluated on
hours that come after everything it was trained on, as it will be in production.
The columns that leak the target (`casual`, `registered`) are dropped here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from forkcast import atomic
from forkcast.config import DataParams, SplitParams
from forkcast.data.features import FEATURES
from forkcast.data.schema import Features, RawHourly, date_of_day


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def as_dict(self) -> dict[str, pd.DataFrame]:
        return dict(self.items())

    def items(self) -> list[tuple[str, pd.DataFrame]]:
        return [("train", self.train), ("validation", self.validation), ("test", self.test)]


class UnusableDataError(ValueError):
    """The raw data has problems that no row filter can fix (a missing column, say)."""


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, skipinitialspace=True)  # as the validate stage reads it: " clear" is "clear"


def load_raw(path: Path) -> pd.DataFrame:
    """The raw table, typed; rows that fail a check (tolerated by `validate.min_pass_rate`) are dropped."""
    return drop_failing_rows(read_table(path))[0]


def drop_failing_rows(table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    try:
        return RawHourly.validate(table, lazy=True), 0
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        whole_table = cases[cases["index"].isna()]
        if not whole_table.empty:
            problems = sorted({f"{row.column}: {row.check} ({row.failure_case})" for row in whole_table.itertuples()})
            raise UnusableDataError(f"problems no row filter can fix: {'; '.join(problems)}") from exc
        failing = set(cases["index"].astype(int))
        return RawHourly.validate(table.drop(index=list(failing))), len(failing)


def add_timestamp(raw: pd.DataFrame, start_date: dt.date) -> pd.Series:
    return date_of_day(raw["day"], start_date) + pd.to_timedelta(raw["hr"], unit="h")


def build_features(raw: pd.DataFrame, data: DataParams) -> pd.DataFrame:
    """Model inputs plus `timestamp` and the target, sorted in time."""
    timestamp = add_timestamp(raw, data.start_date)
    table = raw.assign(timestamp=timestamp, month=timestamp.dt.month)
    features = Features.validate(table[list(FEATURES)])
    prepared = pd.concat([table[["timestamp"]], features, table[[data.target]]], axis=1)
    return prepared.sort_values("timestamp", kind="stable").reset_index(drop=True)


def split_by_time(prepared: pd.DataFrame, split: SplitParams) -> Splits:
    """Split whole days in time order; every split gets at least one day."""
    days = prepared["timestamp"].dt.normalize()
    unique_days = np.sort(days.unique())
    n_days = len(unique_days)
    if n_days < 3:
        raise ValueError(f"need at least 3 days of data to split train/validation/test, got {n_days}")
    n_test = max(1, round(n_days * split.test_fraction))
    n_validation = max(1, round(n_days * split.validation_fraction))
    n_train = n_days - n_test - n_validation
    if n_train < 1:
        raise ValueError(f"{n_days} days leave no training data with these split fractions")
    validation_start = unique_days[n_train]
    test_start = unique_days[n_train + n_validation]
    return Splits(
        train=prepared[days < validation_start].reset_index(drop=True),
        validation=prepared[(days >= validation_start) & (days < test_start)].reset_index(drop=True),
        test=prepared[days >= test_start].reset_index(drop=True),
    )


def write_splits(splits: Splits, path_of: dict[str, Path]) -> None:
    for name, frame in splits.items():
        atomic.write_atomic(path_of[name], partial(_to_parquet, frame))


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def read_split(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)
