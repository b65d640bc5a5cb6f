"""Pandera schemas: the raw hourly data as it arrives, and the model's input features."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from forkcast.data.features import MONTH_NAMES, WEATHER

MAX_DAYS = 36_500  # a century of daily data
LEAKING_COLUMNS = ("casual", "registered")  # they sum to the target: never a model input


class RawHourly(pa.DataFrameModel):
    """One row per hour of bike rentals, as published (see the data card in the README)."""

    season: Series[int] = pa.Field(isin=[1, 2, 3, 4])
    mnth: Series[str] = pa.Field(isin=list(MONTH_NAMES))
    day: Series[int] = pa.Field(ge=1)  # days counted from `data.start_date` (day 1); 1-365 in 2011
    hr: Series[int] = pa.Field(in_range={"min_value": 0, "max_value": 23})
    holiday: Series[int] = pa.Field(isin=[0, 1])
    weekday: Series[int] = pa.Field(in_range={"min_value": 0, "max_value": 6})
    workingday: Series[int] = pa.Field(isin=[0, 1])
    weathersit: Series[str] = pa.Field(isin=list(WEATHER))
    temp: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    atemp: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    hum: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    windspeed: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    casual: Series[int] = pa.Field(ge=0)
    registered: Series[int] = pa.Field(ge=0)
    bikers: Series[int] = pa.Field(ge=0)

    class Config:
        strict = False  # extra columns are tolerated and ignored
        coerce = True  # "1.0" in an integer column is still a whole number
        unique = ["day", "hr"]  # noqa: RUF012 (pandera reads it as is)  # one row per hour

    @pa.dataframe_check(name="workingday_consistent")
    @classmethod
    def workingday_consistent(cls, df: pd.DataFrame) -> pd.Series:
        """A working day is a weekday (Mon-Fri) that is not a holiday."""
        expected = (~df["weekday"].isin([0, 6]) & (df["holiday"] == 0)).astype(int)
        return df["workingday"] == expected

    @pa.dataframe_check(name="target_is_casual_plus_registered")
    @classmethod
    def target_is_sum(cls, df: pd.DataFrame) -> pd.Series:
        """The target equals casual plus registered rentals."""
        return df["bikers"] == df["casual"] + df["registered"]


def date_of_day(day: pd.Series, start_date: dt.date) -> pd.Series:
    """The calendar date of each `day` number (day 1 is `start_date`); NaT where there is none."""
    days = pd.to_numeric(day, errors="coerce")
    days = days.where(days.between(1, MAX_DAYS))  # pandas timestamps end in 2262
    dates: pd.Series = pd.Timestamp(start_date) + pd.to_timedelta(days - 1, unit="D")
    return dates


def month_matches_day(df: pd.DataFrame, start_date: dt.date) -> pd.Series:
    """The month name agrees with the calendar date of `day` (needs the data's start date)."""
    dates = date_of_day(df["day"], start_date)
    expected = dates.dt.month.map(dict(enumerate(MONTH_NAMES, start=1)))
    matches: pd.Series = df["mnth"] == expected
    return matches


class Features(pa.DataFrameModel):
    """The model's input: one row per hour, as the service will receive it."""

    season: Series[int] = pa.Field(isin=[1, 2, 3, 4])
    month: Series[int] = pa.Field(in_range={"min_value": 1, "max_value": 12})
    hr: Series[int] = pa.Field(in_range={"min_value": 0, "max_value": 23})
    holiday: Series[int] = pa.Field(isin=[0, 1])
    weekday: Series[int] = pa.Field(in_range={"min_value": 0, "max_value": 6})
    workingday: Series[int] = pa.Field(isin=[0, 1])
    temp: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    atemp: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    hum: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    windspeed: Series[float] = pa.Field(in_range={"min_value": 0.0, "max_value": 1.0})
    weathersit: Series[str] = pa.Field(isin=list(WEATHER))

    class Config:
        strict = "filter"  # anything else (the target, leaking columns) is dropped
        coerce = True
