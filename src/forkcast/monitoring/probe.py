"""Endpoint health, for the scheduled health workflow: is the service up, does it answer, how fast.

One probe: GET /readyz and /livez; ONE prediction of a known valid record (the example the service itself
gives in /metadata, one of its golden cases, sent as `x-request-id: probe-<uuid>`), timed against a latency
budget; and /metrics, the Prometheus
text BentoML 1.4 serves. Its families (labelled by endpoint and http_response_code):
`bentoml_service_request_total` (counter), `bentoml_service_request_duration_seconds` (histogram),
`bentoml_service_request_in_progress` and `bentoml_service_last_request_timestamp_seconds` (gauges).

With `FORKCAST_API_TOKEN` set here, every request carries it as `Authorization: Bearer <token>` (the
service's /predict and /metadata need it when it has one; health and /metrics are open).

Probe traffic lands in the inference log like any other request: the drift job drops `probe-`
requests as it drops `smoke-` ones.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from forkcast import atomic, paths
from forkcast.data.declaration import Inputs, Target
from forkcast.serving.contract import PROBE_REQUEST_PREFIX, REQUEST_ID_HEADER, auth_headers
from forkcast.serving.smoke import within

PROBE_DIR = paths.OUTPUTS / "probe"
CHECKS = ("readyz", "livez", "prediction", "latency", "metrics")

REQUEST_TOTAL = "bentoml_service_request_total"
REQUEST_DURATION = "bentoml_service_request_duration_seconds"
IN_PROGRESS = "bentoml_service_request_in_progress"
PREDICT_ROUTE = "/predict"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class ProbeCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class ProbeReport:
    url: str
    environment: str | None
    budget_ms: float
    reachable: bool
    checks: list[ProbeCheck]
    latency_ms: float | None = None
    model_version: str | None = None
    request_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.passed]

    @property
    def passed(self) -> bool:
        return self.reachable and len(self.checks) == len(CHECKS) and not self.failed


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (comments and malformed lines skipped)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if line.startswith("#") or not match:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append(Sample(name, dict(_LABEL.findall(labels or "")), number))
    return samples


def metric_families(text: str) -> dict[str, str]:
    """Each metric family named by a `# TYPE` line, with its type."""
    families = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[:2] == ["#", "TYPE"]:
            families[parts[2]] = parts[3]
    return families


def summarize_metrics(samples: list[Sample]) -> dict[str, Any]:
    """The counters worth a glance: /predict requests by status, server errors, mean /predict time."""
    predict: dict[str, int] = {}
    server_errors, in_progress, seconds, answered = 0, 0, 0.0, 0
    for sample in samples:
        endpoint, code = sample.labels.get("endpoint"), sample.labels.get("http_response_code", "")
        if sample.name == REQUEST_TOTAL:
            if endpoint == PREDICT_ROUTE:
                predict[code] = predict.get(code, 0) + int(sample.value)
            if code.startswith("5"):
                server_errors += int(sample.value)
        elif sample.name == IN_PROGRESS:
            in_progress += int(sample.value)
        elif endpoint == PREDICT_ROUTE and code == "200" and sample.name == f"{REQUEST_DURATION}_sum":
            seconds += sample.value
        elif endpoint == PREDICT_ROUTE and code == "200" and sample.name == f"{REQUEST_DURATION}_count":
            answered += int(sample.value)
    return {
        "predict_requests": dict(sorted(predict.items())),
        "server_errors": server_errors,
        "in_progress": in_progress,
        "predict_mean_ms": round(seconds / answered * 1000, 3) if answered else None,
    }


def _no_answer(error: httpx.TransportError) -> str:
    return f"no answer: {type(error).__name__}: {error}"


def _health(client: httpx.Client, route: str) -> ProbeCheck:
    try:
        status = client.get(route).status_code
    except httpx.TransportError as error:
        return ProbeCheck(route.strip("/"), False, _no_answer(error))
    return ProbeCheck(route.strip("/"), status == 200, f"GET {route} answered {status}")


@dataclass(frozen=True)
class _Served:
    """What /metadata says a request and an answer look like: a valid record, the unit, the target's range."""

    example: dict[str, Any] | None
    unit: str = ""  # or, without an example, why there is none
    target: Target | None = None


def _served(client: httpx.Client) -> _Served:
    try:
        response = client.post("/metadata", json={})
        info = response.json()
        target = Inputs.model_validate(info["inputs"]).target if "inputs" in info else None
        return _Served(dict(info["example"]), str(info.get("unit", "")), target)
    except httpx.TransportError as error:
        return _Served(None, _no_answer(error))
    except (ValueError, KeyError, TypeError):
        return _Served(
            None, f"POST /metadata answered {response.status_code} without an example: {response.text[:200]}"
        )


def _judge_prediction(response: httpx.Response, request_id: str, served: _Served) -> tuple[ProbeCheck, str | None]:
    """The prediction check and the model version that answered."""
    if response.status_code != 200:
        return ProbeCheck("prediction", False, f"answered {response.status_code}: {response.text[:300]}"), None
    try:
        body = response.json()
        predictions, version = body["predictions"], str(body["model_version"])
        echoed = body["request_id"]
    except (ValueError, KeyError, TypeError):
        return ProbeCheck("prediction", False, f"not a prediction: {response.text[:300]}"), None
    if not isinstance(predictions, list) or len(predictions) != 1:
        return ProbeCheck("prediction", False, f"expected one prediction, got {predictions!r:.200}"), version
    value = predictions[0]
    target = served.target or Target(name="the target", type="float", unit=served.unit)
    if not within(value, target):
        return ProbeCheck(
            "prediction", False, f"{value!r:.50} is not a finite number in {target.name}'s range"
        ), version
    if echoed != request_id:  # the drift job could not tell this probe from real traffic
        return ProbeCheck("prediction", False, f"request {request_id} was answered as {echoed!r}"), version
    return ProbeCheck(
        "prediction", True, f"{value:.4g} {served.unit} from model version {version}".replace("  ", " ")
    ), version


def _latency(latency_ms: float | None, budget_ms: float) -> ProbeCheck:
    if latency_ms is None:
        return ProbeCheck("latency", False, "no answer to time")
    if latency_ms > budget_ms:
        return ProbeCheck("latency", False, f"{latency_ms:.3g} ms is over the {budget_ms:g} ms budget")
    return ProbeCheck("latency", True, f"{latency_ms:.3g} ms (budget {budget_ms:g} ms)")


def _metrics(client: httpx.Client) -> tuple[ProbeCheck, dict[str, Any]]:
    try:
        response = client.get("/metrics")
    except httpx.TransportError as error:
        return ProbeCheck("metrics", False, _no_answer(error)), {"served": False}
    families = metric_families(response.text) if response.status_code == 200 else {}
    if not families:
        detail = f"GET /metrics answered {response.status_code}" + (" without metrics" if response.is_success else "")
        return ProbeCheck("metrics", False, detail), {"served": False}
    summary = summarize_metrics(parse_samples(response.text))
    mean = summary["predict_mean_ms"]
    detail = (
        f"{len(families)} families; /predict requests by status {summary['predict_requests']}, "
        f"{summary['server_errors']} server errors, mean /predict {'-' if mean is None else f'{mean:.3g} ms'}"
    )
    return ProbeCheck("metrics", True, detail), {"served": True, "families": families, **summary}


def probe(
    url: str,
    budget_ms: float,
    *,
    environment: str | None = None,
    record: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> ProbeReport:
    """Probe the service at `url` once; a service that does not answer /readyz at all is not reachable."""
    request_id = f"{PROBE_REQUEST_PREFIX}{uuid.uuid4().hex}"
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=auth_headers()) as client:
        try:
            ready = client.get("/readyz").status_code
        except httpx.TransportError as error:
            return ProbeReport(url, environment, budget_ms, False, [ProbeCheck("readyz", False, _no_answer(error))])
        checks = [ProbeCheck("readyz", ready == 200, f"GET /readyz answered {ready}"), _health(client, "/livez")]
        latency_ms, version = None, None
        served = _Served(record) if record else _served(client)
        if served.example is None:
            prediction = ProbeCheck("prediction", False, f"no example record to send: {served.unit}")
        else:
            started = time.perf_counter()
            try:
                response = client.post(
                    "/predict", json={"records": [served.example]}, headers={REQUEST_ID_HEADER: request_id}
                )
                latency_ms = round((time.perf_counter() - started) * 1000, 3)
                prediction, version = _judge_prediction(response, request_id, served)
            except httpx.TransportError as error:
                prediction = ProbeCheck("prediction", False, _no_answer(error))
        metrics, summary = _metrics(client)
    checks += [prediction, _latency(latency_ms, budget_ms), metrics]
    return ProbeReport(url, environment, budget_ms, True, checks, latency_ms, version, request_id, summary)


def record_path(environment: str | None) -> Path:
    return PROBE_DIR / f"{environment or 'adhoc'}.json"


def save(report: ProbeReport, path: Path) -> Path:
    atomic.write_json(path, {"passed": report.passed, **asdict(report)})
    return path


def render_table(report: ProbeReport) -> str:
    width = max(len(check.name) for check in report.checks)
    return "\n".join(
        f"  {'pass' if check.passed else 'FAIL'}  {check.name:<{width}}  {check.detail}" for check in report.checks
    )
