"""The current traffic: the window of the inference log to judge (smoke tests and probes left out), and its labels."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from forkcast.data.declaration import Inputs
from forkcast.monitoring.drift import DriftError
from forkcast.serving import inference_log
from forkcast.serving.contract import CHECK_REQUEST_PREFIXES, PREDICTION

LABEL_COLUMNS = ("request_id", "position", "actual")
REQUEST_COLUMNS = ("timestamp", "request_id", "position", "model_version")
SAMPLE_SEED = 20110101


@dataclass(frozen=True)
class Window:
    since: dt.datetime
    until: dt.datetime

    @classmethod
    def ending(cls, until: dt.datetime | None, days: int) -> Window:
        end = until or dt.datetime.now(dt.UTC)
        return cls(end - dt.timedelta(days=days), end)

    def as_dict(self) -> dict[str, Any]:
        days = (self.until - self.since) / dt.timedelta(days=1)
        return {
            "since": self.since.isoformat(timespec="seconds"),
            "until": self.until.isoformat(timespec="seconds"),
            "days": days,
        }


def parse_until(text: str | None) -> dt.datetime | None:
    """An ISO date or time (`2026-03-02`, `2026-03-02T06:00:00Z`); UTC unless it says otherwise."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise DriftError(
            f"--until {text!r} is not an ISO date or time such as 2026-03-02 or 2026-03-02T06:00Z"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Traffic:
    table: pa.Table  # the window's rows, smoke traffic dropped: REQUEST_COLUMNS, the features and the prediction
    smoke_rows: int

    @property
    def rows(self) -> int:
        return int(self.table.num_rows)


def read_traffic(sink: str, window: Window, inputs: Inputs) -> Traffic:
    """The window's logged records (only the columns the comparison needs), without smoke tests and probes."""
    columns = [*REQUEST_COLUMNS, *inputs.names, PREDICTION]
    try:
        table = inference_log.read(sink, schema=inference_log.log_schema(inputs), since=window.since, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise DriftError(f"cannot read the inference log at {sink}: {exc}") from exc
    until = pa.scalar(window.until.astimezone(dt.UTC), type=pa.timestamp("ms", tz="UTC"))
    in_window = pc.fill_null(pc.less(table["timestamp"], until), False)
    ids = table["request_id"]
    ours = pc.or_(*(pc.fill_null(pc.starts_with(ids, prefix), False) for prefix in CHECK_REQUEST_PREFIXES))
    smoke = pc.and_(in_window, ours)
    smoke_rows = int(pc.sum(smoke).as_py() or 0)
    return Traffic(table.filter(pc.and_(in_window, pc.invert(smoke))), smoke_rows)  # one copy, not two


def read_labels(path: Path) -> pd.DataFrame:
    """Known outcomes: request_id, position, actual; rows without an actual are not labelled yet."""
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path, dtype={"request_id": str})
        elif path.suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
        else:
            raise DriftError(f"labels file {path}: expected .parquet or .csv")
    except (OSError, ValueError) as exc:
        raise DriftError(f"cannot read the labels file {path}: {exc}") from exc
    missing = [name for name in LABEL_COLUMNS if name not in frame.columns]
    if missing:
        raise DriftError(
            f"the labels file {path} lacks the column(s) {', '.join(missing)} "
            f"(it has {', '.join(map(str, frame.columns))}); a labels file has one row per predicted record: "
            "request_id, position (from 0), actual"
        )
    frame = frame[list(LABEL_COLUMNS)].dropna(subset=["actual"])
    try:
        position = pd.to_numeric(frame["position"], errors="raise")
        actual = pd.to_numeric(frame["actual"], errors="raise").astype("float64")
        if position.isna().any() or not (position == position.round()).all():
            raise ValueError("a position is missing or not a whole number")
    except (ValueError, TypeError) as exc:
        raise DriftError(f"the labels file {path}: position must be whole numbers and actual numbers ({exc})") from exc
    labels = pd.DataFrame(
        {"request_id": frame["request_id"].astype(str), "position": position.astype("int32"), "actual": actual}
    )
    duplicated = int(labels.duplicated(["request_id", "position"]).sum())
    if duplicated:
        raise DriftError(f"the labels file {path} labels {duplicated} (request_id, position) pair(s) more than once")
    return labels


def join_labels(traffic: Traffic, labels: pd.DataFrame, keys: Sequence[str] = ()) -> pd.DataFrame:
    """The window's labelled records: prediction, actual and the seasonal `keys`, over every row of the window (not
    the sample)."""
    known = pa.table(
        {
            "request_id": pa.array(labels["request_id"], pa.string()),
            "position": pa.array(labels["position"], pa.int32()),
            "actual": pa.array(labels["actual"], pa.float64()),
        }
    )
    logged = traffic.table.select(["request_id", "position", PREDICTION, *keys])
    joined = logged.join(known, keys=["request_id", "position"], join_type="inner")
    labelled: pd.DataFrame = joined.select([PREDICTION, "actual", *keys]).to_pandas()
    return labelled


def sample(table: pa.Table, max_rows: int, seed: int = SAMPLE_SEED) -> tuple[pa.Table, bool]:
    """At most `max_rows` rows: a seeded uniform sample without replacement, in log order."""
    if table.num_rows <= max_rows:
        return table, False
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=max_rows, replace=False))
    return table.take(pa.array(keep)), True


def current_frame(table: pa.Table, reference: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """The features and predictions as pandas, typed like the reference (the log stores float32)."""
    frame: pd.DataFrame = table.select([*features, PREDICTION]).to_pandas()
    for name in features:
        if frame[name].isna().any():
            continue  # an integer type cannot hold the gap; the quality table reports it
        frame[name] = frame[name].astype(reference[name].dtype)
    frame[PREDICTION] = frame[PREDICTION].astype("float64")
    return frame
