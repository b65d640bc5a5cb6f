"""Simulate new data arriving: the training data grows month by month from an upstream feed.

The feed (declared as `feed` in dataset.yaml, under `feed/`, tracked by `feed.dvc`) stands in for the system
new rows come from. `arrive` rewrites the training data as the feed's rows up to the end of a
month, byte for byte, so `dvc add data` then changes `data.dvc` exactly as a real
data push would.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from forkcast import atomic
from forkcast.data.calendar import timestamps
from forkcast.data.declaration import TimeAxis


class ArrivalError(Exception):
    """The requested month cannot be taken from the feed."""


def _months(path: Path, time: TimeAxis) -> pd.Series:
    try:
        table = pd.read_csv(path, usecols=list(time.columns), dtype=str)
        dates = timestamps(table, time)
    except (ValueError, TypeError, pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        raise ArrivalError(f"cannot read the times of {path}: {exc}") from exc
    if dates.isna().any():
        line = int(dates.isna().to_numpy().argmax()) + 2
        raise ArrivalError(
            f"{path} line {line} has no valid time ({time.describe()}): run `forkcast validate --data {path}`"
        )
    months: pd.Series = dates.dt.to_period("M")
    return months


def _parse_month(text: str) -> pd.Period:
    if not re.fullmatch(r"\d{4}-\d{2}", text):
        raise ArrivalError(f"--through must look like YYYY-MM, got '{text}'")
    try:
        return pd.Period(text, freq="M")
    except ValueError as exc:
        raise ArrivalError(f"--through {text} is not a month") from exc


def arrive(feed: Path, data: Path, time: TimeAxis, through: str | None) -> str:
    """Write the feed's rows up to the end of month `through` (or the month after `data`'s last) to `data`."""
    if not feed.exists():
        raise ArrivalError(f"feed {feed} not found: run `dvc pull feed.dvc` first")
    feed_months = _months(feed, time)
    if through is None:
        if not data.exists():
            raise ArrivalError(f"{data} does not exist yet: start with --through YYYY-MM")
        last = _months(data, time).max()
        later = feed_months[feed_months > last]
        if later.empty:
            raise ArrivalError(f"the feed has no month after {last}: the data already holds all of it")
        month = later.min()
    else:
        month = _parse_month(through)
        if month < feed_months.min() or month > feed_months.max():
            raise ArrivalError(f"the feed covers {feed_months.min()} .. {feed_months.max()}, not {month}")

    keep = int((feed_months <= month).sum())
    if not (feed_months.iloc[:keep] <= month).all():
        raise ArrivalError(f"the feed {feed} is not in time order")
    # Bytes, not text: the new data must be the feed's own bytes (line endings included).
    lines = feed.read_bytes().splitlines(keepends=True)
    if len(lines) != len(feed_months) + 1:
        raise ArrivalError(
            f"the feed {feed} has blank or broken lines: {len(lines) - 1} lines, {len(feed_months)} rows"
        )
    atomic.write_atomic(data, lambda tmp: tmp.write_bytes(b"".join(lines[: keep + 1])))  # +1: the header
    latest = int((feed_months == month).sum())
    return f"{data}: {keep:,} rows, {feed_months.min()} .. {month} (the latest month, {month}, has {latest:,})"
