"""The inference log: every served prediction, appended as Parquet files to a local directory or S3.

Layout: `SINK/date=YYYY-MM-DD/part-<time>-<pid>-<n>.parquet`, one row per predicted record
(request id, position in the request, time, model version, environment, the features and the
prediction). Hive-style date partitions let the drift job read only the window it needs. The feature columns
and their types come from the model's input contract: whole numbers as int64, numbers as float32 (what ONNX
Runtime scores with), text as strings. A log written beside a shadow challenger (`shadow=True`, see
serving/shadow.py) has two more columns at the end, `challenger_version` and `challenger_prediction` (null where
the challenger failed or was skipped): readers that ask for the usual columns never see them, and files without
them read as nulls.

Requests only append to an in-memory buffer; a background thread writes it out every
`flush_seconds` (5 s by default, or sooner when it grows large), so logging costs a request microseconds.
`close()` writes what is left. A worker that is killed (not stopped) loses the rows of its last
`flush_seconds` at most.

When the sink fails (a full disk, an unreachable bucket), serving goes on at the same speed and memory:
- the rows stay buffered and the write is retried with backoff (1 s, doubling up to 60 s), not per request;
- beyond `max_rows` buffered rows (20,000), the oldest are spilled to a local directory (`spill_dir`) while it
  holds less than `max_spill_bytes` (256 MB); beyond that, or if the spill fails too, the oldest rows are dropped;
- once the sink takes writes again, spilled files are moved into it, a few per cycle (rows spilled at shutdown
  included).
A write that hangs (rather than fails) holds the writer: then rows beyond twice `max_rows` are dropped at once,
without a spill, so that memory stays bounded.
Every failure, spill and drop is counted (`stats`, and the service's Prometheus metrics) and logged in one line.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from forkcast.data.declaration import Inputs
from forkcast.serving.contract import CHALLENGER_PREDICTION, CHALLENGER_VERSION, PREDICTION

log = logging.getLogger(__name__)

SINK_ENV = "FORKCAST_INFERENCE_LOG"
DEFAULT_SINK = "outputs/inference/local"
FLUSH_ENV = "FORKCAST_INFERENCE_FLUSH_SECONDS"  # how often workers write their rows (the crash-loss window)
BUFFER_ENV = "FORKCAST_INFERENCE_BUFFER_ROWS"  # rows a worker holds in memory while the sink fails
PROBE_ROWS = 1_000  # the first write after a failure: is the sink back?
RETURN_FILES = 8  # spilled files moved back into the sink per write cycle
REPORT_SECONDS = 30.0  # spills and drops are logged at most this often (their counters are exact)
Outcome = Literal["written", "spilled", "dropped", "returned", "failed"]  # "failed": one write attempt
_TYPES = {"int": pa.int64(), "float": pa.float32(), "str": pa.string()}
_REQUEST_FIELDS = [
    pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
    pa.field("request_id", pa.string()),
    pa.field("position", pa.int32()),
    pa.field("model_version", pa.string()),
    pa.field("environment", pa.string()),
]


_SHADOW_FIELDS = [pa.field(CHALLENGER_VERSION, pa.string()), pa.field(CHALLENGER_PREDICTION, pa.float32())]


def log_schema(inputs: Inputs | None = None, *, shadow: bool = False) -> pa.Schema:
    """The log's columns: the request's, the features of `inputs` (none without), the prediction, and with `shadow`
    the challenger's version and prediction."""
    features = [pa.field(f.name, _TYPES[f.type]) for f in inputs.features] if inputs else []
    return pa.schema([*_REQUEST_FIELDS, *features, pa.field(PREDICTION, pa.float32()), *(_SHADOW_FIELDS * shadow)])


@dataclass(frozen=True)
class _Request:
    timestamp: dt.datetime
    request_id: str
    model_version: str
    columns: dict[str, list[Any]]
    predictions: np.ndarray
    challenger_version: str | None = None
    challenger_predictions: np.ndarray | None = None  # None: the challenger failed or was skipped


class InferenceLogMetrics:
    """Prometheus metrics of what became of the logged rows, shown on /metrics beside bentoml's own."""

    def __init__(self) -> None:
        # Imported here, in the worker: bentoml points prometheus_client at its multiprocess directory at start-up.
        import prometheus_client

        self.rows = prometheus_client.Counter(
            "forkcast_inference_log_rows",
            "Rows of the inference log: written to the sink; spilled locally while it fails; returned to it from "
            "the spill; dropped (sink and spill both failing or full)",
            ["outcome"],
        )
        self.failures = prometheus_client.Counter(
            "forkcast_inference_log_write_failures", "Failed attempts to write the inference log to its sink"
        )
        self.waiting = prometheus_client.Gauge(
            "forkcast_inference_log_buffered_rows", "Rows held in memory, not yet written", multiprocess_mode="livesum"
        )

    def count(self, outcome: Outcome, rows: int) -> None:
        if outcome == "failed":
            self.failures.inc(rows)
        else:
            self.rows.labels(outcome=outcome).inc(rows)

    def buffered(self, rows: int) -> None:
        self.waiting.set(rows)


@functools.cache  # one set per process: prometheus_client refuses a metric registered twice
def inference_log_metrics() -> InferenceLogMetrics:
    return InferenceLogMetrics()


def resolve_sink(sink: str) -> tuple[pafs.FileSystem, str]:
    """A filesystem and root path for a local directory or an `s3://bucket/prefix` URI.

    S3 credentials, region and endpoint (`AWS_ENDPOINT_URL` for an S3-compatible server)
    come from the usual AWS environment variables.
    """
    if "://" in sink:
        filesystem, path = pafs.FileSystem.from_uri(sink)
        return filesystem, path.rstrip("/")
    return pafs.LocalFileSystem(), str(Path(sink).resolve())


@dataclass
class LogStats:
    """What became of the rows so far; `failures` counts failed writes to the sink."""

    written: int = 0
    spilled: int = 0
    dropped: int = 0
    returned: int = 0  # spilled rows moved into the sink once it worked again
    failures: int = 0
    buffered: int = 0
    failing_since: float | None = field(default=None, repr=False)  # time.monotonic() of the first failure


class Counters(Protocol):
    """Where the log reports what became of its rows (the service's Prometheus metrics)."""

    def count(self, outcome: Outcome, rows: int) -> None: ...

    def buffered(self, rows: int) -> None: ...


class NoCounters:
    def count(self, outcome: Outcome, rows: int) -> None:
        return None

    def buffered(self, rows: int) -> None:
        return None


class InferenceLog:
    def __init__(
        self,
        sink: str,
        inputs: Inputs,
        *,
        environment: str = "local",
        flush_seconds: float = 5.0,
        flush_rows: int = 20_000,
        max_rows: int = 20_000,
        max_spill_bytes: int = 256 * 1024 * 1024,
        retry_seconds: tuple[float, float] = (1.0, 60.0),
        spill_dir: Path | None = None,
        counters: Counters | None = None,
        shadow: bool = False,
    ) -> None:
        self.sink = sink
        self.environment = environment
        self.shadow = shadow
        self.schema = log_schema(inputs, shadow=shadow)
        self._features = inputs.names
        self._filesystem, self._root = resolve_sink(sink)
        self._flush_seconds = flush_seconds
        self._flush_rows = flush_rows
        self._max_rows = max_rows
        self._max_spill_bytes = max_spill_bytes
        self._retry_first, self._retry_max = retry_seconds
        self._spill_dir = (spill_dir or Path("outputs/inference-spill")).resolve()
        self._counters = counters or NoCounters()
        self._pending: deque[_Request] = deque()
        self._pending_rows = 0
        self._lock = threading.Lock()  # guards the buffer and the stats
        self._write_lock = threading.Lock()  # one writer at a time
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._counter = itertools.count()
        self._run = uuid.uuid4().hex[:8]
        self._retry_at = 0.0  # time.monotonic() of the next attempt while the sink fails
        self._retry_delay = self._retry_first
        self._reported: dict[str, float] = {}  # when spills and drops were last logged
        self.stats = LogStats()
        self._writer = threading.Thread(target=self._write_periodically, name="inference-log", daemon=True)
        self._writer.start()

    @property
    def rows_written(self) -> int:
        return self.stats.written

    @property
    def failing(self) -> bool:
        return self.stats.failing_since is not None

    def append(
        self,
        request_id: str,
        model_version: str,
        columns: dict[str, list[Any]],
        predictions: np.ndarray,
        timestamp: dt.datetime | None = None,
        *,
        challenger: tuple[str, np.ndarray | None] | None = None,
    ) -> None:
        """Queue one request's records and predictions (and the challenger's version and predictions, in a log made
        with `shadow`); never blocks on I/O."""
        version, shadowed = challenger or (None, None)
        request = _Request(
            timestamp or dt.datetime.now(dt.UTC), request_id, model_version, columns, predictions, version, shadowed
        )
        with self._lock:  # closed is checked under the lock `close` takes: no row slips in after the last flush
            if self._closed.is_set():
                raise RuntimeError("the inference log is closed")
            self._pending.append(request)
            self._pending_rows += len(predictions)
            if self._pending_rows > self._max_rows or (self._pending_rows >= self._flush_rows and not self.failing):
                self._wake.set()  # the writer writes, or makes room
            # The writer is stuck: memory stays bounded regardless.
            dropped = _rows(self._take_oldest(keep=2 * self._max_rows))
            self.stats.dropped += dropped
            self.stats.buffered = self._pending_rows
        if dropped:
            self._counters.count("dropped", dropped)

    def _take_oldest(self, keep: int) -> list[_Request]:
        """Take the oldest requests out of the buffer until at most `keep` rows remain (hold `_lock`)."""
        taken = []
        while self._pending and self._pending_rows > keep:
            request = self._pending.popleft()
            self._pending_rows -= len(request.predictions)
            taken.append(request)
        return taken

    def flush(self, at_most: int | None = None) -> int:
        """Write everything buffered so far (or only the oldest requests up to `at_most` rows), one file per day;
        returns the number of rows written.

        If a write fails, the requests of that day and of the days after it go back to the buffer
        (the days already written do not), and the error is raised.
        """
        with self._write_lock:
            with self._lock:
                batch = self._take_oldest(keep=0 if at_most is None else max(0, self._pending_rows - at_most))
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
                    self._pending.extendleft(reversed(unwritten))
                    self._pending_rows += _rows(unwritten)
                raise
            finally:
                with self._lock:
                    self.stats.written += written
                    self.stats.buffered = self._pending_rows
                if written:
                    self._counters.count("written", written)
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
        except Exception as error:
            log.error("inference log: could not write to %s at shutdown (%s)", self.sink, _reason(error))
            with self._lock:
                batch, self._pending, self._pending_rows = list(self._pending), deque(), 0
            rows = self._spill(batch, limit=None)
            if rows:
                log.error(
                    "inference log: %d rows written to %s instead; the next server moves them into %s once it "
                    "can write there", rows, self._spill_dir, self.sink,
                )  # fmt: skip

    def _write_periodically(self) -> None:
        while not self._closed.is_set():
            waiting = self._retry_at - time.monotonic() if self.failing else self._flush_seconds
            self._wake.wait(max(0.0, min(waiting, self._flush_seconds)))
            self._wake.clear()
            if self._closed.is_set():
                return  # close() writes what is left
            if self.failing and time.monotonic() < self._retry_at:
                self._make_room()  # no write attempt before the backoff ends
            else:
                try:
                    # While the sink fails, a retry writes a small batch first: a whole buffer built into a table
                    # only to fail again would cost the requests' CPU.
                    self.flush(at_most=PROBE_ROWS if self.failing else None)
                    if self.failing:
                        self.flush()
                except Exception as error:
                    self._failed(error)
                    self._make_room()
                else:
                    self._succeeded()
            self._counters.buffered(self.stats.buffered)

    def _failed(self, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self.stats.failures += 1
            first = self.stats.failing_since is None
            if first:
                self.stats.failing_since = now
                self._retry_delay = self._retry_first
            else:
                self._retry_delay = min(self._retry_delay * 2, self._retry_max)
            self._retry_at = now + self._retry_delay
            buffered = self._pending_rows
        self._counters.count("failed", 1)
        message = "inference log: writing to %s failed (%s); %d rows kept in memory, next attempt in %g s"
        (log.error if first else log.warning)(message, self.sink, _reason(error), buffered, self._retry_delay)

    def _succeeded(self) -> None:
        if self.failing:
            with self._lock:
                since, self.stats.failing_since = self.stats.failing_since, None
                failures = self.stats.failures
            log.warning(
                "inference log: %s takes writes again after %.0f s (%d failed attempts so far)",
                self.sink, time.monotonic() - (since or 0.0), failures,
            )  # fmt: skip
        self._return_spilled()

    def _make_room(self) -> None:
        """Spill (or drop) the oldest rows beyond `max_rows`, down to half of it: a few large files, not many."""
        with self._lock:
            if self._pending_rows <= self._max_rows:
                return
            oldest = self._take_oldest(keep=self._max_rows // 2)
            self.stats.buffered = self._pending_rows
        rows = _rows(oldest)
        spilled = self._spill(oldest, limit=self._max_spill_bytes)
        if spilled < rows:
            with self._lock:
                self.stats.dropped += rows - spilled
            self._counters.count("dropped", rows - spilled)
            if self._due("dropped"):
                log.error(
                    "inference log: the sink %s fails and the spill directory %s is full or failing: %d rows "
                    "dropped so far, the oldest first", self.sink, self._spill_dir, self.stats.dropped,
                )  # fmt: skip
        elif self._due("spilled"):
            log.warning(
                "inference log: the sink %s fails: %d rows spilled to %s so far, moved into the sink when it works",
                self.sink, self.stats.spilled, self._spill_dir,
            )  # fmt: skip

    def _due(self, event: str) -> bool:
        """Whether to log `event` now: the first time, then at most every REPORT_SECONDS."""
        now = time.monotonic()
        if now - self._reported.get(event, -REPORT_SECONDS) < REPORT_SECONDS:
            return False
        self._reported[event] = now
        return True

    def _spill(self, requests: list[_Request], limit: int | None) -> int:
        """Write `requests` to the spill directory, a file per day; returns the rows spilled (0 when it fails
        or would exceed `limit` bytes spilled by this worker)."""
        if not requests or (limit is not None and _size_of(self._spill_dir) >= limit):
            return 0
        local = pafs.LocalFileSystem()
        rows = 0
        try:
            for day in sorted({_utc_day(request.timestamp) for request in requests}):
                of_day = [request for request in requests if _utc_day(request.timestamp) == day]
                self._write_file(of_day, day, local, str(self._spill_dir))
                rows += _rows(of_day)
        except Exception as error:
            if limit is None or self._due("spill failed"):
                log.error("inference log: spilling to %s failed too (%s)", self._spill_dir, _reason(error))
        with self._lock:
            self.stats.spilled += rows
        if rows:
            self._counters.count("spilled", rows)
        return rows

    def _return_spilled(self) -> None:
        """Move spilled files into the sink, each claimed first (a rename) so that two workers never both move it."""
        if not self._spill_dir.is_dir():
            return
        returned = 0
        # A few files per cycle: live traffic keeps its writer while a long outage's spill drains.
        for path in sorted(self._spill_dir.glob("date=*/part-*.parquet"))[:RETURN_FILES]:
            claimed = path.with_name(f".{path.name}.{self._run}.claimed")
            try:
                path.rename(claimed)
            except OSError:
                continue  # another worker took it
            try:
                table = pq.read_table(claimed)  # as it was written, by this model's schema or an earlier one
                directory = f"{self._root}/{path.parent.name}"
                self._filesystem.create_dir(directory, recursive=True)
                self._put(table, directory, path.stem, self._filesystem)
            except Exception as error:
                claimed.rename(path)
                log.warning("inference log: could not move %s into %s yet (%s)", path, self.sink, _reason(error))
                return
            claimed.unlink()
            returned += int(table.num_rows)
        if returned:
            with self._lock:
                self.stats.returned += returned
            self._counters.count("returned", returned)
            log.warning("inference log: %d spilled rows moved from %s into %s", returned, self._spill_dir, self.sink)

    def _write(self, requests: list[_Request], day: dt.date, filesystem: pafs.FileSystem, root: str) -> int:
        """One Parquet file with the rows of `requests`, all from `day`."""
        self._write_file(requests, day, filesystem, root)
        return _rows(requests)

    def _write_file(self, requests: list[_Request], day: dt.date, filesystem: pafs.FileSystem, root: str) -> str:
        directory = f"{root}/date={day.isoformat()}"
        name = f"part-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._run}-{next(self._counter)}"
        filesystem.create_dir(directory, recursive=True)
        return self._put(self._table(requests), directory, name, filesystem)

    @staticmethod
    def _put(table: pa.Table, directory: str, name: str, filesystem: pafs.FileSystem) -> str:
        path = f"{directory}/{name}.parquet"
        if isinstance(filesystem, pafs.LocalFileSystem):
            # Readers skip dot-files: a half-written file is never read, and one that failed is removed
            # (on a full disk, it would hold the space the next attempt needs).
            temporary = f"{directory}/.{name}.parquet.tmp"
            try:
                pq.write_table(table, temporary, filesystem=filesystem)
                filesystem.move(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        else:  # an object store makes the object visible only once it is complete
            pq.write_table(table, path, filesystem=filesystem)
        return path

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
        if self.shadow:
            data[CHALLENGER_VERSION] = per_row([request.challenger_version for request in batch])
            scored = [
                np.full(size, np.nan) if request.challenger_predictions is None else request.challenger_predictions
                for request, size in zip(batch, sizes, strict=True)
            ]
            values = np.concatenate(scored).astype(np.float32)
            data[CHALLENGER_PREDICTION] = pa.array(values, pa.float32(), mask=np.isnan(values))
        return pa.Table.from_pydict(data, schema=self.schema)


def _rows(requests: list[_Request]) -> int:
    return sum(len(request.predictions) for request in requests)


def _size_of(directory: Path) -> int:
    """Bytes of the files under `directory` (0 when it does not exist): what the spill holds now, whoever wrote it."""
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file()) if directory.is_dir() else 0


def _reason(error: BaseException) -> str:
    """An error in one line: its type and message, no traceback (a failing sink would repeat it every attempt)."""
    return f"{type(error).__name__}: {error}".splitlines()[0]


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
