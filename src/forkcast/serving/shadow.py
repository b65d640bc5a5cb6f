"""Shadow scoring: a challenger model scores the same records as the served model, off the request path.

The request path answers with the served model (the champion) and only queues what it answered; one thread per worker
wakes every `interval` seconds (0.1), or once `batch_rows` records wait, scores the queued requests with the challenger
in one call, and appends each request to the inference log with both predictions. So the challenger never changes an
answer, and costs a request only the queueing (microseconds); woken per request instead, the thread's hand-offs of the
interpreter lock cost a third of the service's throughput under load. What it costs is CPU beside the requests:
see benchmarks/README.md (Shadow).

A challenger that fails (raises, or cannot be loaded), is slow or falls behind never fails or delays a request:
- a failed call is counted and its requests are logged with the challenger's version and no prediction;
- a challenger that takes more than `max_share` of the worker's time (CPU seconds of its thread per second: 0.1)
  sheds load: new requests are logged without it (skipped) until it is back under the budget, so a slow challenger
  (the scikit-learn pipeline instead of ONNX) cannot take the service's throughput with it;
- beyond `max_rows` queued records new requests are logged at once without one (skipped), so the log keeps every
  answer and memory stays bounded;
- `close()` scores what is queued within its timeout; the rest is logged without a challenger prediction.
Each outcome is counted on /metrics (`forkcast_shadow_requests_total{outcome="scored|failed|skipped"}`), and a
failure is logged once per REPORT_SECONDS, not per request.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from forkcast.serving.inference_log import InferenceLog

log = logging.getLogger("bentoml.forkcast")

QUEUE_ROWS = 20_000  # records waiting for the challenger, per worker, before new requests are skipped
BATCH_ROWS = 1_000  # records per call of the challenger (a largest request alone); as many waiting wake it early
INTERVAL_SECONDS = 0.1  # how often the challenger scores what waits
MAX_SHARE = 0.1  # of the worker's time the challenger may use; beyond, requests are skipped (FORKCAST_SHADOW_MAX_SHARE)
BUDGET_SECONDS = 1.0  # the window the share is measured over
CLOSE_SECONDS = 10.0  # how long a stopping worker lets the challenger finish the queue
REPORT_SECONDS = 30.0
Outcome = Literal["scored", "failed", "skipped"]
Scorer = Callable[[Mapping[str, Sequence[Any]]], np.ndarray]


class ShadowMetrics:
    """Prometheus counters of the challenger's requests, shown on /metrics beside bentoml's own."""

    def __init__(self) -> None:
        import prometheus_client  # in the worker: bentoml points it at its multiprocess directory at start-up

        self.requests = prometheus_client.Counter(
            "forkcast_shadow_requests",
            "Requests the shadow challenger scored; failed to score (it raised or could not be loaded); skipped (its "
            "queue was full). The answers never depend on it.",
            ["outcome"],
        )

    def count(self, outcome: Outcome, requests: int) -> None:
        self.requests.labels(outcome=outcome).inc(requests)


@functools.cache  # one set per process: prometheus_client refuses a metric registered twice
def shadow_metrics() -> ShadowMetrics:
    return ShadowMetrics()


class Counters(Protocol):
    def count(self, outcome: Outcome, requests: int) -> None: ...


@dataclass
class ShadowStats:
    scored: int = 0  # requests
    failed: int = 0
    skipped: int = 0
    last_error: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class _Answered:
    timestamp: dt.datetime
    request_id: str
    model_version: str
    columns: dict[str, list[Any]]
    predictions: np.ndarray


class Shadow:
    """Scores answered requests with `scorer` in a thread of its own, and logs them with both predictions.

    `scorer` None: the challenger could not be loaded (`problem` says why); every request is logged and counted as
    failed, so the gap shows on /metrics and in the log rather than as a silently missing column.
    """

    def __init__(
        self,
        scorer: Scorer | None,
        version: str,
        inference_log: InferenceLog,
        *,
        problem: str | None = None,
        max_rows: int = QUEUE_ROWS,
        batch_rows: int = BATCH_ROWS,
        interval: float = INTERVAL_SECONDS,
        max_share: float = MAX_SHARE,
        budget_seconds: float = BUDGET_SECONDS,
        counters: Counters | None = None,
    ) -> None:
        if not inference_log.shadow:
            raise ValueError("the inference log has no challenger columns: make it with shadow=True")
        self.version = version
        self.problem = problem if scorer is None else None
        self._scorer = scorer
        self._log = inference_log
        self._max_rows = max_rows
        self._batch_rows = batch_rows
        self._interval = interval
        self._max_share = max_share
        self._budget_seconds = budget_seconds
        self._shedding = False  # over its budget: new requests are skipped
        self._window = (time.monotonic(), 0.0)  # since when, and the thread's CPU seconds since then
        self._counters = counters
        self._queue: deque[_Answered] = deque()
        self._queued_rows = 0
        self._in_flight: list[_Answered] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._abandoned = False  # close() gave up waiting: the thread's batch was logged without it
        self._reported: dict[str, float] = {}  # when each kind of problem was last logged
        self.stats = ShadowStats()
        self._thread = threading.Thread(target=self._run, name="shadow-challenger", daemon=True)
        self._thread.start()

    def submit(
        self, request_id: str, model_version: str, columns: dict[str, list[Any]], predictions: np.ndarray
    ) -> None:
        """Queue an answered request for the challenger (the log gets it once it is scored). Never raises and never
        waits on the challenger: with the queue full or the shadow closed, the request is logged without it."""
        answered = _Answered(dt.datetime.now(dt.UTC), request_id, model_version, columns, predictions)
        with self._lock:
            queued = not (self._closed or self._shedding) and self._queued_rows + len(predictions) <= self._max_rows
            if queued:
                self._queue.append(answered)
                self._queued_rows += len(predictions)
                due = self._queued_rows >= self._batch_rows
            else:
                self.stats.skipped += 1
        if queued:
            if due:  # else the thread's interval: a wake-up per request costs more than the scoring
                self._wake.set()
            return
        self._count("skipped", 1)
        self._log_without([answered])

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Score what is queued (within `timeout` s), log it and stop; what is left is logged without the challenger."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            left = [*self._in_flight, *self._queue] if self._thread.is_alive() else list(self._queue)
            self._abandoned = True
            self._queue.clear()
            self._queued_rows = 0
        if left:
            log.warning("shadow: the challenger did not finish within %.0f s: %d requests logged without it",
                        timeout, len(left))  # fmt: skip
            self.stats.skipped += len(left)
            self._count("skipped", len(left))
            self._log_without(left)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()  # before taking: a batch queued from now on wakes the next wait
            while batch := self._take():
                started = time.thread_time()
                self._score(batch)
                self._window = (self._window[0], self._window[1] + time.thread_time() - started)
                self._budget()  # after each batch: a challenger that never catches up must shed load too
            self._budget()
            with self._lock:
                if self._closed and not self._queue:
                    return

    def _budget(self) -> None:
        """Shed load while the challenger used more than `max_share` of the last window's time."""
        since, spent = self._window
        elapsed = time.monotonic() - since
        if elapsed < self._budget_seconds:
            return
        shedding = spent / elapsed > self._max_share
        if shedding and not self._shedding and self._due("over budget"):
            log.warning("shadow: challenger v%s used %.0f%% of the worker's time (budget %.0f%%): requests are "
                        "logged without it while it is over", self.version, 100 * spent / elapsed,
                        100 * self._max_share)  # fmt: skip
        self._shedding = shedding
        self._window = (time.monotonic(), 0.0)

    def _due(self, problem: str) -> bool:
        """Whether to log `problem` now: the first time, then at most every REPORT_SECONDS."""
        now = time.monotonic()
        with self._lock:
            due = now - self._reported.get(problem, -REPORT_SECONDS) >= REPORT_SECONDS
            if due:
                self._reported[problem] = now
        return due

    def _take(self) -> list[_Answered]:
        """The oldest queued requests, up to `batch_rows` records (at least one request)."""
        with self._lock:
            batch: list[_Answered] = []
            rows = 0
            while self._queue and (not batch or rows + len(self._queue[0].predictions) <= self._batch_rows):
                answered = self._queue.popleft()
                rows += len(answered.predictions)
                batch.append(answered)
            self._queued_rows -= rows
            self._in_flight = batch
            return batch

    def _score(self, batch: list[_Answered]) -> None:
        sizes = [len(answered.predictions) for answered in batch]
        scored: list[np.ndarray] | None = None
        try:
            if self._scorer is None:
                raise RuntimeError(f"the challenger could not be loaded: {self.problem}")
            columns = batch[0].columns if len(batch) == 1 else {
                name: [value for answered in batch for value in answered.columns[name]] for name in batch[0].columns
            }  # fmt: skip
            predictions = np.asarray(self._scorer(columns), dtype=np.float64)
            if predictions.shape != (sum(sizes),):
                raise ValueError(f"{sum(sizes)} records got predictions of shape {predictions.shape}")
            scored = np.split(predictions, np.cumsum(sizes)[:-1])
        except Exception as error:
            self._failed(error, len(batch))
        with self._lock:
            self._in_flight = []
            if self._abandoned:
                return  # close() logged them already
            if scored is not None:
                self.stats.scored += len(batch)
        self._count("scored" if scored is not None else "failed", len(batch))
        for number, answered in enumerate(batch):
            self._append(answered, scored[number] if scored is not None else None)

    def _failed(self, error: Exception, requests: int) -> None:
        reason = f"{type(error).__name__}: {error}".splitlines()[0]
        with self._lock:
            self.stats.failed += requests
            self.stats.last_error = reason
        if self._due("failed"):  # once per REPORT_SECONDS: an always failing challenger would fill the server log
            log.error("shadow: challenger v%s failed (%s): %d requests so far logged without its predictions; "
                      "the answers are not affected", self.version, reason, self.stats.failed)  # fmt: skip

    def _log_without(self, requests: list[_Answered]) -> None:
        for answered in requests:
            self._append(answered, None)

    def _append(self, answered: _Answered, challenger: np.ndarray | None) -> None:
        try:
            self._log.append(
                answered.request_id, answered.model_version, answered.columns, answered.predictions,
                timestamp=answered.timestamp, challenger=(self.version, challenger),
            )  # fmt: skip
        except RuntimeError as error:  # the log closed first: nothing to write to
            log.error("shadow: request %s not logged (%s)", answered.request_id, error)

    def _count(self, outcome: Outcome, requests: int) -> None:
        if self._counters is not None:
            self._counters.count(outcome, requests)
