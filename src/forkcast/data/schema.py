"""Pandera schemas derived from the declaration: the raw table as it arrives, and the model's inputs.

Column checks come from each column's type and range or categories. Row checks need several columns: the time
(each row has one, on the declared frequency), columns that restate the time's calendar, and the declared rules.
The validate stage runs every check on its own to measure its pass rate (`validation.py`); `prepare` runs the
same schema to drop the rows a tolerated check refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa

from forkcast.data import calendar, expressions
from forkcast.data.declaration import Column, ColumnType, Dataset, Feature

DTYPES: dict[ColumnType, str] = {"int": "int64", "float": "float64", "str": "str"}


def value_checks(column: Column | Feature) -> list[pa.Check]:
    """The allowed values of one column: its categories, or its range."""
    if column.categories is not None:
        return [pa.Check.isin(list(column.categories))]
    if column.min is not None and column.max is not None:
        return [pa.Check.in_range(column.min, column.max)]
    if column.min is not None:
        return [pa.Check.ge(column.min)]
    if column.max is not None:
        return [pa.Check.le(column.max)]
    return []


@dataclass(frozen=True)
class RowCheck:
    """A check over several columns of each row; `columns` are those it reads (a row missing one fails it)."""

    name: str
    description: str
    columns: tuple[str, ...]
    run: Callable[[pd.DataFrame], pd.Series]


def row_checks(dataset: Dataset) -> list[RowCheck]:
    """The time, calendar and rule checks, in report order."""
    time = dataset.time
    checks = [
        RowCheck(
            "time.valid",
            f"each row has a time: {time.describe()}",
            time.columns,
            lambda df: _stamps(df, dataset).notna(),
        ),
        RowCheck(
            "time.on_frequency",
            f"each time falls on the {time.frequency.adjective} grid",
            time.columns,
            lambda df: on_frequency(_stamps(df, dataset), dataset),
        ),
    ]
    for name, column in dataset.file_columns.items():
        if column.calendar is not None:
            checks.append(
                RowCheck(
                    f"{name}.matches_time",
                    f"`{name}` agrees with the {column.calendar.replace('_', ' ')} of the time",
                    (name, *time.columns),
                    _agrees_with_time(name, column, dataset),
                )
            )
    for name, rule in dataset.rules.items():
        used = expressions.names(rule)
        reads = tuple(sorted(used & set(dataset.columns))) + (time.columns if used & set(dataset.calendar) else ())
        checks.append(RowCheck(f"rows.{name}", rule, reads, _rule(rule, dataset)))
    return checks


def _stamps(df: pd.DataFrame, dataset: Dataset) -> pd.Series:
    return calendar.timestamps(df, dataset.time)


def on_frequency(stamps: pd.Series, dataset: Dataset) -> pd.Series:
    """Whether each time lies on the declared frequency's grid (missing times do not)."""
    frequency = dataset.time.frequency
    midnight = stamps.dt.normalize()
    minutes = (stamps - midnight) / pd.Timedelta(minutes=1)
    if frequency.sub_daily:
        on_grid = minutes % frequency.minutes == 0
    elif frequency.minutes == 1_440:
        on_grid = minutes == 0
    else:  # weekly: every row on the weekday of the first one
        first = stamps.dropna()
        weekday = first.iloc[0].weekday() if len(first) else 0
        on_grid = (minutes == 0) & (stamps.dt.weekday == weekday)
    result: pd.Series = on_grid.fillna(False).astype(bool) & stamps.notna()
    return result


def _agrees_with_time(name: str, column: Column, dataset: Dataset) -> Callable[[pd.DataFrame], pd.Series]:
    def run(df: pd.DataFrame) -> pd.Series:
        attribute = column.calendar or ""
        return calendar.calendar_position(df[name], _stamps(df, dataset), attribute, column.categories)

    return run


def _rule(rule: str, dataset: Dataset) -> Callable[[pd.DataFrame], pd.Series]:
    def run(df: pd.DataFrame) -> pd.Series:
        used = expressions.names(rule)
        values: dict[str, object] = {name: df[name] for name in used if name in df.columns}
        derived = [name for name in used if name in dataset.calendar]
        if derived:
            stamps = _stamps(df, dataset)
            derived_values = calendar.calendar_features(stamps, dataset, derived)
            values |= {str(name): column.astype("float64") for name, column in derived_values.items()}
        missing = used - set(values)
        if missing:
            raise KeyError(f"needs the column(s) {', '.join(sorted(missing))}")
        return pd.Series(expressions.evaluate(rule, values), index=df.index)

    return run


def raw_schema(dataset: Dataset) -> pa.DataFrameSchema:
    """The raw table: every declared file column with its type and values, the row checks, one row per key."""
    columns = {
        name: pa.Column(DTYPES[column.type], checks=value_checks(column), nullable=False, coerce=True)
        for name, column in dataset.file_columns.items()
    }
    checks = [pa.Check(check.run, name=check.name, error=check.description) for check in row_checks(dataset)]
    return pa.DataFrameSchema(columns, checks=checks, unique=list(dataset.unique_key), strict=False, coerce=True)


def features_schema(dataset: Dataset) -> pa.DataFrameSchema:
    """The model's input: the features with their types and values; anything else is dropped."""
    columns = {
        feature.name: pa.Column(DTYPES[feature.type], checks=value_checks(feature), nullable=False, coerce=True)
        for feature in dataset.features
    }
    return pa.DataFrameSchema(columns, strict="filter", coerce=True)
