"""The inference log: every served prediction, appended as Parquet files to a local directory or S3.

Layout: `SINK/date=YYYY-MM-DD/part-<time>-<pid>-<n>.parquet`, one row per predicted record
(request id, position in the request, time, model version, environment, the features and the
prediction). Hive-style date partitions let the drift job read only the window it needs. The feature columns
and their types come from the model's input contract: whole numbers as int64, numbers as float32 (what ONNX
Runtime scores with), text as strings.

Requests only append to an in-memory buffer; a background thread writes it out every
`flush_seconds` (5 s by default, or sooner when it grows large), so logging costs a request microseconds.
`close()` writes what is left, and a write that fails keeps its rows for the next attempt;
at shutdown, rows that still cannot be written go to a local spill directory instead.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from forkcast.data.declaration import Inputs
from forkcast.serving.contract import PREDICTION

log = logging.getLogger(__name__)

SINK_ENV = "FORKCAST_INFERENCE_LOG"
DEFAULT_SINK = "outputs/inference/local"
_TYPES = {"int": pa.int64(), "float": pa.float32(), "str": pa.string()}
_REQUEST_FIELDS = [
    pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
    pa.field("request_id", pa.string()),
    pa.field("position", pa.int32()),
    pa.field("model_version", pa.string()),
    pa.field("environment", pa.string()),
]


def log_schema(inputs: Inputs | None = None) -> pa.Schema:
    """The log's columns: the request's, the features of `inputs` (none without), and the prediction."""
    features = [pa.field(f.name, _TYPES[f.type]) for f in inputs.features] if inputs else []
    return pa.schema([*_REQUEST_FIELDS, *features, pa.field(PREDICTION, pa.float32())])


@dataclass(frozen=True)
class _Request:
    timestamp: dt.datetime
    request_id: str
    model_version: str
    columns: dict[str, list[Any]]
    predictions: np.ndarray


def resolve_sink(sink: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and root path for a local directory or an `s3://bucket/prefix` URI.

    S3 credentials, region and endpoint (`AWS_ENDPOINT_URL` for an S3-compatible server)
    come from the usual AWS environment variables.
    """
    if "://" in sink:
        filesystem, path = pafs.FileSystem.from_uri(sink)
        return filesystem, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(sink).resolve())


class InferenceLog:
    def __init__(
        self,
        sink: str,
        inputs: Inputs,
        *,
        environment: str = "local",
        flush_seconds: float = 5.0,
        flush_rows: int = 20_000,
        spill_dir: Path | None = None,
    ) -> None:
        self.sink = sink
        self.environment = environment
        self.schema = log_schema(inputs)
        self._features = inputs.names
        self._filesystem, self._root = resolve_sink(sink)
        self._flush_seconds = flush_seconds
        self._flush_rows = flush_rows
        self._spill_dir = spill_dir or Path("outputs/inference-spill")
        self._pending: list[_Request] = []
        self._pending_rows = 0
        self._lock = threading.Lock()  # guards the buffer
        self._write_lock = threading.Lock()  # one writer at a time
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._counter = itertools.count()
        self._run = uuid.uuid4().hex[:8]
        self.rows_written = 0
        self._writer = threading.Thread(target=self._write_periodically, name="inference-log", daemon=True)
        self._writer.start()

    def append(
        self,
        request_id: str,
        model_version: str,
        columns: dict[str, list[Any]],
        predictions: np.ndarray,
        timestamp: dt.datetime | None = None,
    ) -> None:
        """Queue one request's records and predictions; never blocks on I/O."""
        request = _Request(timestamp or dt.datetime.now(dt.UTC), request_id, model_version, columns, predictions)
        with self._lock:  # closed is checked under the lock `close` takes: no row slips in after the last flush
            if self._closed.is_set():
                raise RuntimeError("the inference log is closed")
            self._pending.append(request)
            self._pending_rows += len(predictions)
            if self._pending_rows >= self._flush_rows:
                self._wake.set()

    def flush(self) -> int:
        """Write everything buffered so far, one file per day; returns the number of rows written.

        If a write fails, the requests of that day and of the days after it go back to the buffer
        (the days already written do not), and the error is raised.
        """
        with self._write_lock:
            with self._lock:
                batch, self._pending, self._pending_rows = self._pending, [], 0
            days: dict[dt.date, list[_Request]] = {}
            for request in batch:
                days.setdefault(_utc_day(request.timestamp), []).append(request)
            written = 0
            remaining = sorted(days)
            try:
                while remaining:
                    written += self._write(days[remaining[0]], remaining[0], self._filesystem, self._root)
                    remaining.pop(0)
            except Exception:
                unwritten = [request for day in remaining for request in days[day]]
                with self._lock:  # back to the front of the buffer, in order
                    self._pending[:0] = unwritten
                    self._pending_rows += sum(len(request.predictions) for request in unwritten)
                raise
            finally:
                self.rows_written += written
            return written

    def close(self) -> None:
        """Stop the writer and write what is left; spill locally if the sink is unreachable."""
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._wake.set()
        self._writer.join(timeout=30)
        try:
            self.flush()
        except Exception:
            log.exception("inference log: could not write to %s at shutdown", self.sink)
            with self._lock:
                batch, self._pending = self._pending, []
            spill = self._spill_dir.resolve()
            rows = 0
            for day in sorted({_utc_day(request.timestamp) for request in batch}):
                requests = [request for request in batch if _utc_day(request.timestamp) == day]
                rows += self._write(requests, day, pafs.LocalFileSystem(), str(spill))
            log.error("inference log: %d rows written to %s instead; copy them to %s", rows, spill, self.sink)

    def _write_periodically(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:
                log.exception("inference log: writing to %s failed; will retry", self.sink)

    def _write(self, requests: list[_Request], day: dt.date, filesystem: pafs.FileSystem, root: str) -> int:
        """One Parquet file with the rows of `requests`, all from `day`."""
        table = self._table(requests)
        directory = f"{root}/date={day.isoformat()}"
        name = f"part-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._run}-{next(self._counter)}"
        filesystem.create_dir(directory, recursive=True)
        if isinstance(filesystem, pafs.LocalFileSystem):
            # Readers skip dot-files: a half-written file is never read.
            temporary = f"{directory}/.{name}.parquet.tmp"
            pq.write_table(table, temporary, filesystem=filesystem)
            filesystem.move(temporary, f"{directory}/{name}.parquet")
        else:  # an object store makes the object visible only once it is complete
            pq.write_table(table, f"{directory}/{name}.parquet", filesystem=filesystem)
        return int(table.num_rows)

    def _table(self, batch: list[_Request]) -> pa.Table:
        sizes = [len(request.predictions) for request in batch]

        def per_row(values: list[Any]) -> list[Any]:  # one value per request, repeated for its records
            return [value for value, size in zip(values, sizes, strict=True) for _ in range(size)]

        data: dict[str, Any] = {
            "timestamp": per_row([request.timestamp for request in batch]),
            "request_id": per_row([request.request_id for request in batch]),
            "position": [position for size in sizes for position in range(size)],
            "model_version": per_row([request.model_version for request in batch]),
            "environment": [self.environment] * sum(sizes),
        }
        for name in self._features:
            data[name] = [value for request in batch for value in request.columns[name]]
        data[PREDICTION] = np.concatenate([request.predictions for request in batch]).astype(np.float32)
        return pa.Table.from_pydict(data, schema=self.schema)


def _utc_day(timestamp: dt.datetime) -> dt.date:
    """The partition of a record: its UTC day, as `read` filters by (an aware time in another zone included)."""
    return timestamp.astimezone(dt.UTC).date()


def read(
    sink: str,
    *,
    schema: pa.Schema | None = None,
    since: dt.datetime | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read the inference log (optionally only records at or after `since`), with the columns of `schema`
    (`log_schema(inputs)`; by default the request's columns and the prediction, no features).

    With `since`, only the `date=` partitions from that day on are opened: older files are neither read
    nor able to break the read.
    """
    filesystem, root = resolve_sink(sink)
    partitioning = ds.partitioning(pa.schema([pa.field("date", pa.string())]), flavor="hive")
    schema = schema or log_schema()
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return schema.empty_table() if columns is None else schema.empty_table().select(list(columns))
    dated = schema.append(pa.field("date", pa.string()))
    dataset = ds.dataset(root, filesystem=filesystem, format="parquet", schema=dated, partitioning=partitioning)
    predicate = None
    if since is not None:
        since_utc = since.astimezone(dt.UTC)
        predicate = (ds.field("date") >= since_utc.date().isoformat()) & (
            ds.field("timestamp") >= pa.scalar(since_utc, type=pa.timestamp("ms", tz="UTC"))
        )
    return dataset.to_table(columns=list(columns) if columns else list(schema.names), filter=predicate)
