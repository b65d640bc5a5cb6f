"""Features that need code: the one place for them. Name one in dataset.yaml as `hook: forkcast.data.hooks:FUNCTION`.

A hook takes the table as the prepare stage sees it (the file's columns, typed, plus `timestamp` and the calendar
features) and returns a DataFrame with one row per input row and a column per feature it adds. Declare each of
those columns in dataset.yaml with `role: feature`, its type and range, and `source: hook`: the request contract,
the inference log and the drift job then know them like any other feature. A caller of the service sends them like
any other field, so compute them the same way before calling it.
"""

from __future__ import annotations

import pandas as pd


def daytime(table: pd.DataFrame) -> pd.DataFrame:
    """An example: `daytime`, 1 from 07:00 to 18:59 (declare it as `{role: feature, type: int, categories: [0, 1],
    source: hook}`)."""
    hours = table["timestamp"].dt.hour
    return pd.DataFrame({"daytime": ((hours >= 7) & (hours < 19)).astype(int)}, index=table.index)
