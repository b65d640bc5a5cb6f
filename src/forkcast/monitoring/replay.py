"""Traffic replay: rows of the real data sent through a deployed service, as callers would send them.

Replaying the model's test period (by default: rows the evaluated model never trained on, though the served
model, refit on every row, has seen them) fills the service's inference log with true seasonal traffic, for demos
of the drift job and for tests.

Every request carries `x-request-id: replay-<uuid>` (the service logs
it; smoke tests send `smoke-`, probes `probe-`), so the drift job can tell replayed traffic apart, and, with
`FORKCAST_API_TOKEN` set here, `Authorization: Bearer <token>` (the service needs it when it has one).

The true values of what was sent go to a labels file (`request_id`, `position` in the request, `actual`):
in real life labels arrive later than predictions, and the drift job joins them to the inference log
on (request_id, position). Replays append to the file, so several of them accumulate.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forkcast import atomic, paths
from forkcast.serving.contract import MAX_RECORDS, REQUEST_ID_HEADER, TOKEN_ENV, auth_headers

REPLAY_REQUEST_PREFIX = "replay-"  # the inference log tells replayed traffic from real traffic by it
LABELS_SCHEMA = pa.schema(
    [pa.field("request_id", pa.string()), pa.field("position", pa.int32()), pa.field("actual", pa.float64())]
)  # position is int32, as in the inference log: the two join on (request_id, position) without a cast
PROGRESS_EVERY = 10  # batches between progress reports

Progress = Callable[[int, int, float], None]  # rows answered, requests answered, seconds so far


class ReplayInputError(ValueError):
    """The dates, batch size or labels file cannot be used; nothing was sent."""


def labels_path(environment: str | None) -> Path:
    """Where a replay's labels go by default: one file per environment (`adhoc` for a bare URL)."""
    return paths.LABELS_DIR / f"{environment or 'adhoc'}.parquet"


def parse_date(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ReplayInputError(f"{option} must be a date YYYY-MM-DD, not '{text}'") from exc


def check_batch(size: int) -> None:
    if not 1 <= size <= MAX_RECORDS:
        raise ReplayInputError(f"--batch must be between 1 and {MAX_RECORDS:,} records (the service's limit)")


def model_test_period(environment: str | None) -> tuple[dt.date, dt.date] | None:
    """The test period of the model the environment serves (else of the pipeline's model), where it is recorded."""
    period: dict[str, Any] | None = None
    if environment is not None:
        from forkcast.serving import build, deploy

        deployed = deploy.load(cast("deploy.Environment", environment))
        if deployed is not None:
            build.use_project_store()
            import bentoml
            from bentoml.exceptions import BentoMLException

            try:
                recorded = bentoml.models.get(deployed.model).info.metadata.get("test_period")
            except BentoMLException:  # the store lost it: fall back to the pipeline's model below
                recorded = None
            period = recorded if isinstance(recorded, dict) else None
    if period is None:
        metadata = atomic.read_json_if_exists(paths.SERVED_METADATA) or {}
        period = (metadata.get("splits") or {}).get("test")
    if not period or not period.get("start") or not period.get("end"):
        return None
    return dt.datetime.fromisoformat(period["start"]).date(), dt.datetime.fromisoformat(period["end"]).date()


def window(start: str | None, end: str | None, test_period: tuple[dt.date, dt.date] | None) -> tuple[dt.date, dt.date]:
    """The dates to replay: those given, else the model's test period."""
    first = parse_date(start, "--from") if start is not None else None
    last = parse_date(end, "--to") if end is not None else None
    if first is None or last is None:
        if test_period is None:
            raise ReplayInputError("no model test period is recorded (run `dvc repro`): give --from and --to")
        if (first and first > test_period[1]) or (last and last < test_period[0]):
            given = f"--from {first}" if first else f"--to {last}"
            raise ReplayInputError(
                f"{given} is outside the model's test period ({test_period[0]}..{test_period[1]}): give both dates"
            )
        first, last = first or test_period[0], last or test_period[1]
    return first, last


def select_rows(prepared: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    """The prepared rows (`prepare.build_features`) whose date is in [start, end], in time order."""
    if end < start:
        raise ReplayInputError(f"--to {end} is before --from {start}")
    if prepared.empty:
        raise ReplayInputError("the data holds no rows")
    dates = prepared["timestamp"].dt.date
    first, last = dates.min(), dates.max()
    covers = f"the data covers {first}..{last}: pick dates inside it, or other data with --data"
    if start < first:
        raise ReplayInputError(f"--from {start} is before the data begins; {covers}")
    if end > last:
        raise ReplayInputError(f"--to {end} is after the data ends; {covers}")
    selected: pd.DataFrame = prepared.loc[(dates >= start) & (dates <= end)]
    if selected.empty:
        raise ReplayInputError(f"the data holds no rows from {start} to {end}")
    return selected.sort_values("timestamp", kind="stable").reset_index(drop=True)


def cycle_batch(rows: pd.DataFrame, rows_per_cycle: int) -> int:
    """Records per request for one natural cycle of every series in `rows` (a day of hours), within the limit."""
    series = max(1, round(len(rows) / rows["timestamp"].nunique())) if len(rows) else 1
    return min(rows_per_cycle * series, MAX_RECORDS)


def to_records(rows: pd.DataFrame, features: Sequence[str]) -> list[dict[str, Any]]:
    """The request records of `rows` (the contract's fields, as plain Python values)."""
    return cast("list[dict[str, Any]]", rows[list(features)].to_dict(orient="records"))


def batches(count: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` items covering `count` items."""
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


@dataclass(frozen=True)
class Stopped:
    """Why a replay stopped before its last batch."""

    reason: Literal["unreachable", "status", "bad answer", "interrupted"]
    detail: str


@dataclass(frozen=True)
class ReplayResult:
    url: str
    planned: int  # rows selected to send
    requests: int  # requests the service answered
    seconds: float
    answers: pd.DataFrame  # request_id, position, actual, prediction: one row per answered record
    stopped: Stopped | None = None

    @property
    def rows(self) -> int:
        return len(self.answers)

    @property
    def labels(self) -> pd.DataFrame:
        return self.answers[list(LABELS_SCHEMA.names)]


class _Stop(Exception):
    def __init__(self, reason: Literal["unreachable", "status", "bad answer"], detail: str) -> None:
        super().__init__(detail)
        self.stopped = Stopped(reason, detail)


def _send(client: httpx.Client, records: list[dict[str, Any]], request_id: str) -> list[float]:
    """POST one batch; its predictions, in order, or _Stop saying why there are none."""
    try:
        response = client.post("/predict", json={"records": records}, headers={REQUEST_ID_HEADER: request_id})
    except httpx.TransportError as error:
        raise _Stop("unreachable", f"{type(error).__name__}: {error}") from error
    if response.status_code != 200:
        hint = f" (set {TOKEN_ENV} to the service's token)" if response.status_code == 401 else ""
        raise _Stop("status", f"the service answered {response.status_code}{hint}: {response.text[:300]}")
    try:
        body = response.json()
        predictions = [float(value) for value in body["predictions"]]
        echoed = body["request_id"]
    except (ValueError, KeyError, TypeError) as error:
        raise _Stop("bad answer", f"the answer holds no predictions: {response.text[:300]}") from error
    if len(predictions) != len(records):
        raise _Stop("bad answer", f"{len(records)} records got {len(predictions)} predictions")
    if echoed != request_id:  # the drift job would not find this request's labels
        raise _Stop("bad answer", f"request {request_id} was answered as {echoed!r}")
    return predictions


def replay(
    url: str,
    records: Sequence[dict[str, Any]],
    actual: Sequence[float],
    batch: int,
    *,
    timeout: float = 10.0,
    progress: Progress | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> ReplayResult:
    """POST `records` to `url`/predict in batches, over one keep-alive connection, until done or refused.

    The result holds the answered records with their true values (`actual`, in the same order): a
    replay that stops half-way (refused, unreachable, Ctrl-C) still returns what was answered before.
    """
    if len(records) != len(actual):
        raise ValueError(f"{len(records)} records but {len(actual)} actual values")
    check_batch(batch)
    answered: list[pd.DataFrame] = []
    stopped: Stopped | None = None
    rows = 0
    started = time.perf_counter()
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=auth_headers()) as client:
        for number, chunk in enumerate(batches(len(records), batch), start=1):
            request_id = f"{REPLAY_REQUEST_PREFIX}{uuid.uuid4().hex}"
            try:
                predictions = _send(client, list(records[chunk]), request_id)
            except _Stop as stop:
                stopped = stop.stopped
                break
            except KeyboardInterrupt:
                stopped = Stopped("interrupted", "interrupted")
                break
            answered.append(
                pd.DataFrame(
                    {
                        "request_id": request_id,
                        "position": range(len(predictions)),
                        "actual": [float(value) for value in actual[chunk]],
                        "prediction": predictions,
                    }
                )
            )
            rows += len(predictions)
            if progress and number % progress_every == 0:
                progress(rows, number, time.perf_counter() - started)
    answers = pd.concat(answered, ignore_index=True) if answered else _no_answers()
    return ReplayResult(url, len(records), len(answered), time.perf_counter() - started, answers, stopped)


def _no_answers() -> pd.DataFrame:
    return pd.DataFrame({"request_id": [], "position": [], "actual": [], "prediction": []})


def read_labels(path: Path) -> pa.Table:
    """The labels already in `path` (none when it does not exist); ReplayInputError if it is not a labels file."""
    if not path.exists():
        return LABELS_SCHEMA.empty_table()
    try:
        return pq.read_table(path).select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA)
    except (OSError, KeyError, pa.ArrowException) as exc:
        raise ReplayInputError(
            f"{path} is not a labels file ({exc}): move it away or give another --labels, so none are lost"
        ) from exc


def append_labels(path: Path, labels: pd.DataFrame) -> int:
    """Add `labels` (request_id, position, actual) to the file at `path`, atomically; the rows now in it."""
    table = pa.concat_tables(
        [read_labels(path), pa.Table.from_pandas(labels, schema=LABELS_SCHEMA, preserve_index=False)]
    )
    atomic.write_atomic(path, partial(pq.write_table, table))
    return int(table.num_rows)


def wait_until_logged(
    sink: str, request_ids: set[str], since: dt.datetime, *, timeout: float = 30.0, poll: float = 0.5
) -> bool:
    """Wait until the service has written every replayed request to its inference log.

    The service writes its log in the background every few seconds; a drift report run straight after a
    replay would otherwise judge part of it.
    """
    from forkcast.serving import inference_log

    deadline = time.monotonic() + timeout
    while True:
        logged = inference_log.read(sink, since=since, columns=["request_id"]).column("request_id").to_pylist()
        if request_ids <= set(logged):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
