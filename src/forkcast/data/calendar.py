"""The time axis of a table: its timestamps from the declared column(s), and the calendar features derived from them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pandas as pd

from forkcast.data.declaration import CALENDAR, Dataset, HolidayCalendar, TimeAxis, Value

MAX_DAY_NUMBER = 36_500  # a century of daily rows; pandas timestamps end in 2262


def timestamps(table: pd.DataFrame, time: TimeAxis) -> pd.Series:
    """Each row's time (NaT where its time columns do not give one), as the declaration reads them."""
    raw = table[time.column]
    if time.format == "day_number":
        days = pd.to_numeric(raw, errors="coerce")
        days = days.where(days.between(1, MAX_DAY_NUMBER) & (days == days.round()))
        origin = time.origin or dt.date(1970, 1, 1)  # the declaration requires it; this keeps mypy content
        stamps = pd.Timestamp(origin) + pd.to_timedelta(days - 1, unit="D")
    else:
        text = raw.astype("string").str.strip()
        # utc=True: times that state an offset (+10:00, or one that changes at daylight saving) become UTC;
        # times without one are taken as they are.
        stamps = pd.to_datetime(
            text, format="ISO8601" if time.format == "iso" else time.format, errors="coerce", utc=True
        ).dt.tz_localize(None)
    if time.hour_column is not None:
        hours = pd.to_numeric(table[time.hour_column], errors="coerce")
        hours = hours.where(hours.between(0, 23) & (hours == hours.round()))
        stamps = stamps + pd.to_timedelta(hours, unit="h")
    return pd.Series(stamps, index=table.index, name="timestamp").astype("datetime64[ns]")


def attribute(stamps: pd.Series, name: str, holidays: HolidayCalendar | None = None) -> pd.Series:
    """One calendar attribute of each time (see `declaration.CALENDAR`); missing where the time is."""
    when = stamps.dt
    match name:
        case "hour":
            values = when.hour
        case "minute_of_day":
            values = when.hour * 60 + when.minute
        case "weekday":
            values = when.weekday
        case "weekend":
            values = (when.weekday >= 5).astype("float64").where(stamps.notna())
        case "month":
            values = when.month
        case "day_of_year":
            values = when.dayofyear
        case "week_of_year":
            values = when.isocalendar().week.astype("float64").where(stamps.notna())
        case "holiday":
            values = _holidays(stamps, holidays)
        case _:
            raise ValueError(f"unknown calendar attribute {name}")
    return pd.Series(values, index=stamps.index, name=name).astype("Int64")


def _holidays(stamps: pd.Series, calendar: HolidayCalendar | None) -> pd.Series:
    import holidays as public_holidays

    if calendar is None:
        raise ValueError("the holiday calendar feature needs `holidays: {country: XX}` in the declaration")
    years = sorted({int(year) for year in stamps.dt.year.dropna().unique()})
    days = public_holidays.country_holidays(calendar.country, subdiv=calendar.subdivision, years=years)
    dates = stamps.dt.normalize()
    marked: pd.Series = dates.isin(pd.to_datetime(list(days))).astype("float64")
    return marked.where(stamps.notna())


def calendar_features(stamps: pd.Series, dataset: Dataset, names: Iterable[str] | None = None) -> pd.DataFrame:
    """The declared calendar features (or those of `names`) of each time."""
    wanted = dataset.calendar if names is None else {name: dataset.calendar[name] for name in names}
    return pd.DataFrame(
        {name: attribute(stamps, source, dataset.holidays) for name, source in wanted.items()}, index=stamps.index
    )


def calendar_position(
    values: pd.Series, stamps: pd.Series, attribute_name: str, categories: tuple[Value, ...] | None
) -> pd.Series:
    """Whether a column that restates a calendar attribute agrees with the time (see `Column.calendar`)."""
    truth = attribute(stamps, attribute_name)
    if categories is None:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        return pd.Series(numbers == truth.to_numpy(dtype="float64", na_value=np.nan), index=values.index)
    first = CALENDAR[attribute_name].minimum
    lookup = {position + first: value for position, value in enumerate(categories)}
    expected = truth.map(lookup)
    agree = values.astype("object").to_numpy() == expected.astype("object").to_numpy()
    return pd.Series(np.asarray(agree, dtype=bool) & truth.notna().to_numpy(), index=values.index)
