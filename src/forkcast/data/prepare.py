"""The prepare stage: typed features and a chronological train/validation/test split.

Each row gets its time (from the declared time column) and the declared calendar and hook features; only the
features and the target are kept, so the columns that leak the target never reach the model. The split is by
whole days in time order, so the model is always evaluated on periods that come after everything it was trained
on, as it will be in production. Beside the splits, `inputs.json` records the model's input contract
(`declaration.Inputs`): training stores it with the model, and the service builds its request contract from it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from forkcast import atomic
from forkcast.config import SplitParams
from forkcast.data import calendar
from forkcast.data.declaration import Dataset, Inputs
from forkcast.data.schema import features_schema, raw_schema


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


def read_table(path: Path, dataset: Dataset) -> pd.DataFrame:
    """The file as the validate stage reads it: " clear" is "clear", and text columns stay text ("01" is not 1)."""
    text = {name: str for name, column in dataset.file_columns.items() if column.type == "str"}
    return pd.read_csv(path, skipinitialspace=True, dtype=text)


def load_raw(path: Path, dataset: Dataset) -> pd.DataFrame:
    """The raw table, typed; rows that fail a check (tolerated by `validate.min_pass_rate`) are dropped."""
    return drop_failing_rows(read_table(path, dataset), dataset)[0]


def drop_failing_rows(table: pd.DataFrame, dataset: Dataset) -> tuple[pd.DataFrame, int]:
    schema = raw_schema(dataset)
    try:
        return schema.validate(table, lazy=True), 0
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        whole_table = cases[cases["index"].isna()]
        if not whole_table.empty:
            problems = sorted({_problem(row.column, row.check, row.failure_case) for row in whole_table.itertuples()})
            raise UnusableDataError(f"problems no row filter can fix: {'; '.join(problems)}") from exc
        failing = set(cases["index"].astype(int))
        if len(failing) == len(table):
            checks = ", ".join(sorted({_check_name(row.column, row.check) for row in cases.itertuples()}))
            raise UnusableDataError(
                f"every one of the {len(table):,} rows fails a check ({checks}): see the validation report"
            ) from exc
        return schema.validate(table.drop(index=list(failing))), len(failing)


def _check_name(column: object, check: object) -> str:
    """A pandera check as the validation report names it: `hum.in_range`, `rows.one_per_period`."""
    name = str(check).split("(", 1)[0]
    if name == "multiple_fields_uniqueness":
        return "rows.one_per_period"
    return name if not isinstance(column, str) or "." in name else f"{column}.{name}"


def _problem(column: object, check: object, case: object) -> str:
    """One whole-table problem in words (pandera reports a missing column as its check on the table)."""
    if check == "column_in_dataframe":
        return f"column '{case}' is missing"
    where = f"column '{column}'" if isinstance(column, str) else "the table"
    return f"{where}: {check} ({case})"


def build_features(raw: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Model inputs plus `timestamp` and the target, sorted in time."""
    stamps = calendar.timestamps(raw, dataset.time)
    table = pd.concat([raw, calendar.calendar_features(stamps, dataset)], axis=1).assign(timestamp=stamps)
    if dataset.hook:
        table = pd.concat([table, run_hook(dataset, table)], axis=1)
    features = features_schema(dataset).validate(table[list(dataset.feature_names)])
    prepared = pd.concat([table[["timestamp"]], features, table[[dataset.target]]], axis=1)
    return prepared.sort_values("timestamp", kind="stable").reset_index(drop=True)


def run_hook(dataset: Dataset, table: pd.DataFrame) -> pd.DataFrame:
    """The columns the declared hook adds (those declared with `source: hook`), for the rows of `table`."""
    hooked = [name for name, column in dataset.columns.items() if column.source == "hook"]
    module_name, _, function_name = (dataset.hook or "").partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise UnusableDataError(f"cannot load the hook {dataset.hook}: {exc}") from exc
    try:
        added = function(table.copy())
    except Exception as exc:  # the forker's code: say whose it is, never crash the stage without a word
        raise UnusableDataError(f"the hook {dataset.hook} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(added, pd.DataFrame):
        raise UnusableDataError(f"the hook {dataset.hook} must return a DataFrame, not {type(added).__name__}")
    missing = [name for name in hooked if name not in added.columns]
    if missing or len(added) != len(table):
        raise UnusableDataError(
            f"the hook {dataset.hook} must return one row per input row with the columns {hooked}"
            + (f"; it lacks {missing}" if missing else f"; it returned {len(added)} rows for {len(table)}")
        )
    return added[hooked].set_axis(table.index)


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


def measured(inputs: Inputs, prepared: pd.DataFrame) -> Inputs:
    """The declared inputs with what only the data tells: how many rows (series) share a period."""
    periods = prepared["timestamp"].nunique()
    per_period = max(1, round(len(prepared) / periods)) if inputs.series and periods else 1
    return inputs.model_copy(update={"rows_per_period": per_period})


def write_splits(splits: Splits, path_of: dict[str, Path], inputs: Inputs, inputs_path: Path) -> None:
    for name, frame in splits.items():
        atomic.write_atomic(path_of[name], partial(_to_parquet, frame))
    atomic.write_json(inputs_path, inputs.model_dump(mode="json"))


def _to_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)


def read_split(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)
