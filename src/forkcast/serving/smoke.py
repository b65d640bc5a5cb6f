"""Smoke tests of a running service: the gate a deployment must pass before anyone relies on it.

Checks, in order: health, the metadata and response contract, known answers (golden test rows
whose in-process predictions the service must reproduce), that bad requests get a 400 naming
the field, that a request without the bearer token gets a 401 (when `FORKCAST_API_TOKEN` is set
here: every request sends it then), and the p95 latency of single-record requests against a budget.
The bad requests are derived from the model's input contract, which the known answers carry.
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from forkcast import atomic
from forkcast.data.declaration import Feature, Inputs, Target
from forkcast.model.onnx import gap, gaps
from forkcast.serving.contract import SMOKE_REQUEST_PREFIX, TOKEN_ENV, auth_headers

Check = Callable[[httpx.Client], str]  # returns a detail line; raises SmokeFailure when the check fails


class SmokeFailure(Exception):
    """One smoke check failed; the message says how."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class SmokeReport:
    url: str
    passed: bool
    checks: list[CheckResult]
    model_version: str | None
    latency_ms: dict[str, float] = field(default_factory=dict)
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))


class GoldenError(Exception):
    """The known answers cannot be read."""


@dataclass(frozen=True)
class Golden:
    model_version: str
    tolerance: float
    records: list[dict[str, Any]]
    expected: list[float]
    inputs: Inputs  # the contract the records follow: the bad requests are made from it
    bento_model: str | None = None  # when known, the service must report serving exactly this model

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Golden:
        try:
            golden = cls(
                str(data["model_version"]),
                float(data["tolerance"]),
                list(data["records"]),
                [float(value) for value in data["expected"]],
                Inputs.model_validate(data["inputs"]),
                data.get("bento_model"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GoldenError(f"known answers without a valid {exc}") from exc
        if not golden.records or len(golden.records) != len(golden.expected):
            raise GoldenError("known answers need as many expected values as records, and at least one")
        return golden

    @classmethod
    def read(cls, path: Path) -> Golden:
        try:
            data = atomic.read_json(path)
        except (OSError, ValueError) as exc:
            raise GoldenError(f"cannot read the known answers in {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise GoldenError(f"{path} does not hold known answers")
        return cls.from_dict(data)


def _post(client: httpx.Client, route: str, body: Any) -> httpx.Response:
    return client.post(route, json=body, headers={"x-request-id": f"{SMOKE_REQUEST_PREFIX}{uuid.uuid4().hex}"})


def _unauthorized_hint(response: httpx.Response) -> str:
    return f" (set {TOKEN_ENV} to the service's token)" if response.status_code == 401 else ""


def _predictions(response: httpx.Response, count: int, target: Target) -> list[float]:
    if response.status_code != 200:
        raise SmokeFailure(
            f"expected 200, got {response.status_code}{_unauthorized_hint(response)}: {response.text[:300]}"
        )
    body = response.json()
    missing = {"request_id", "model_version", "predictions"} - set(body)
    if missing:
        raise SmokeFailure(f"response lacks {sorted(missing)}: {body}")
    predictions = body["predictions"]
    if not isinstance(predictions, list) or len(predictions) != count:
        raise SmokeFailure(f"expected {count} predictions, got {predictions!r:.200}")
    if not all(within(value, target) for value in predictions):
        raise SmokeFailure(f"predictions must be finite numbers within {target.name}'s range: {predictions!r:.200}")
    return [float(value) for value in predictions]


class SmokeSuite:
    def __init__(self, golden: Golden, latency_requests: int, p95_budget_ms: float) -> None:
        self.golden = golden
        self.latency_requests = latency_requests
        self.p95_budget_ms = p95_budget_ms
        self.latency_ms: dict[str, float] = {}
        self.model_version: str | None = None

    def checks(self) -> list[tuple[str, Check]]:
        return [
            ("health", self.health),
            ("metadata", self.metadata),
            ("contract", self.contract),
            ("known answers", self.known_answers),
            ("bad requests get 400", self.bad_requests),
            ("no token gets 401", self.unauthorized),
            ("latency budget", self.latency),
        ]

    def health(self, client: httpx.Client) -> str:
        for route in ("/livez", "/readyz"):
            status = client.get(route).status_code
            if status != 200:
                raise SmokeFailure(f"GET {route} answered {status}")
        return "/livez and /readyz answer 200"

    def metadata(self, client: httpx.Client) -> str:
        response = _post(client, "/metadata", {})
        if response.status_code != 200:
            raise SmokeFailure(f"POST /metadata answered {response.status_code}{_unauthorized_hint(response)}")
        info = response.json()
        if not isinstance(info, dict):
            raise SmokeFailure(f"/metadata answered {info!r:.200} instead of an object")
        self.model_version = str(info.get("model_version"))
        if self.model_version != self.golden.model_version:
            raise SmokeFailure(f"serves model version {self.model_version}, expected {self.golden.model_version}")
        if self.golden.bento_model and info.get("bento_model") != self.golden.bento_model:
            raise SmokeFailure(
                f"serves model {info.get('bento_model')}, not the deployed bento's {self.golden.bento_model}"
            )
        return f"model version {self.model_version} ({info.get('backend')}), data {info.get('data_hash')}"

    def contract(self, client: httpx.Client) -> str:
        response = _post(client, "/predict", {"records": self.golden.records[:1]})
        _predictions(response, 1, self.golden.inputs.target)
        return "one record in, one prediction in the target's range with request id and model version out"

    def known_answers(self, client: httpx.Client) -> str:
        target = self.golden.inputs.target
        batch = _predictions(
            _post(client, "/predict", {"records": self.golden.records}), len(self.golden.records), target
        )
        single = _predictions(_post(client, "/predict", {"records": self.golden.records[-1:]}), 1, target)
        each = gaps(batch, self.golden.expected)
        worst = int(np.argmax(each))
        if each[worst] > self.golden.tolerance:
            raise SmokeFailure(
                f"golden case {worst}: served {batch[worst]:.6g}, expected {self.golden.expected[worst]:.6g} "
                f"(tolerance {self.golden.tolerance:g} x max(1, |expected|))"
            )
        if gap(single, batch[-1:]) > self.golden.tolerance:
            raise SmokeFailure(f"the same record scored {single[0]:.6g} alone and {batch[-1]:.6g} in a batch")
        return f"{len(batch)} golden cases within {self.golden.tolerance:g} x max(1, |expected|) (max {each.max():.2g})"

    def bad_requests(self, client: httpx.Client) -> str:
        cases = bad_requests(self.golden.records[0], self.golden.inputs)
        for label, body, field_name in cases:
            response = _post(client, "/predict", body)
            if response.status_code != 400 or field_name not in response.text:
                raise SmokeFailure(
                    f"{label}: expected 400 naming '{field_name}', got {response.status_code}: {response.text[:200]}"
                )
        malformed = client.post("/predict", content=b'{"records": [', headers={"content-type": "application/json"})
        if malformed.status_code != 400:
            raise SmokeFailure(f"malformed JSON: expected 400, got {malformed.status_code}")
        return f"{len(cases) + 1} bad requests answered 400 naming the problem"

    def unauthorized(self, client: httpx.Client) -> str:
        if "authorization" not in client.headers:
            return f"not checked: no {TOKEN_ENV} here, so the service is taken to need none"
        request = client.build_request("POST", "/predict", json={"records": self.golden.records[:1]})
        del request.headers["authorization"]
        response = client.send(request)
        if response.status_code != 401 or "Authorization" not in response.text:
            raise SmokeFailure(
                f"POST /predict without the token: expected 401 naming the Authorization header, got "
                f"{response.status_code}: {response.text[:200]}"
            )
        if not response.headers.get("www-authenticate", "").startswith("Bearer"):
            raise SmokeFailure(f"the 401 lacks `WWW-Authenticate: Bearer` ({response.headers.get('www-authenticate')})")
        return "POST /predict without the bearer token answered 401 naming the Authorization header"

    def latency(self, client: httpx.Client) -> str:
        body = {"records": self.golden.records[:1]}
        _post(client, "/predict", body)  # warm the connection
        timings, responses = [], []
        for _ in range(self.latency_requests):
            started = time.perf_counter()
            responses.append(_post(client, "/predict", body))
            timings.append((time.perf_counter() - started) * 1000)
        for response in responses:  # checked after the clock stopped: only answers that count are timed
            _predictions(response, 1, self.golden.inputs.target)
        p50, p95, p99 = (float(np.percentile(timings, q)) for q in (50, 95, 99))
        self.latency_ms = {"p50": round(p50, 3), "p95": round(p95, 3), "p99": round(p99, 3)}
        detail = f"p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms over {self.latency_requests} requests"
        if p95 > self.p95_budget_ms:
            raise SmokeFailure(f"{detail}: p95 is over the {self.p95_budget_ms:g} ms budget")
        return f"{detail} (budget p95 {self.p95_budget_ms:g} ms)"


def within(value: Any, target: Target) -> bool:
    """A prediction is a finite number inside the target's declared range (demand is never negative)."""
    if isinstance(value, bool) or not isinstance(value, float | int) or not math.isfinite(value):
        return False
    return (target.min is None or value >= target.min) and (target.max is None or value <= target.max)


def bad_requests(record: dict[str, Any], inputs: Inputs) -> list[tuple[str, Any, str]]:
    """Requests the contract must refuse with a 400 naming the field: (what is wrong, body, the field's name)."""
    features = inputs.features
    first = features[0].name
    cases: list[tuple[str, Any, str]] = [
        ("missing field", {"records": [{k: v for k, v in record.items() if k != first}]}, first)
    ]
    bounded = next((feature for feature in features if _beyond(feature) is not None), None)
    if bounded is not None:
        cases.append(("out of range", {"records": [{**record, bounded.name: _beyond(bounded)}]}, bounded.name))
    text = next((feature for feature in features if feature.type == "str"), None)
    mistyped, wrong = (text.name, 3) if text else (first, "not a number")
    cases += [
        ("wrong type", {"records": [{**record, mistyped: wrong}]}, mistyped),
        ("extra field", {"records": [{**record, inputs.target.name: 10}]}, inputs.target.name),
        ("empty batch", {"records": []}, "records"),
    ]
    return cases


def _beyond(feature: Feature) -> int | float | str | None:
    """A value just outside what the feature allows (None when anything goes)."""
    if feature.categories is not None:
        if feature.type == "str":
            return "no such " + feature.name
        return int(max(int(value) for value in feature.categories)) + 1
    if feature.max is None and feature.min is None:
        return None
    span = (feature.max - feature.min) if feature.max is not None and feature.min is not None else 1.0
    step = 1 if feature.type == "int" else max(span / 2, 0.5)
    value = feature.max + step if feature.max is not None else (feature.min or 0) - step
    return int(value) if feature.type == "int" else float(value)


def run(url: str, suite: SmokeSuite, timeout: float = 10.0) -> SmokeReport:
    results = []
    with httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=auth_headers()) as client:
        for name, check in suite.checks():
            started = time.perf_counter()
            try:
                detail, passed = check(client), True
            except SmokeFailure as failure:
                detail, passed = str(failure), False
            except Exception as error:  # a connection error, a body that is not JSON...: the check failed
                detail, passed = f"{type(error).__name__}: {error}", False
            results.append(CheckResult(name, passed, detail, round(time.perf_counter() - started, 3)))
            if name == "health" and not passed:
                break  # nothing else can pass
    passed = len(results) == len(suite.checks()) and all(result.passed for result in results)
    return SmokeReport(url, passed, results, suite.model_version, suite.latency_ms)


def render_markdown(report: SmokeReport) -> str:
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Smoke tests: {verdict}",
        "",
        f"Service {report.url}, model version {report.model_version or 'unknown'}, at {report.at}.",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |" for c in report.checks]
    return "\n".join(lines) + "\n"


def save(report: SmokeReport, directory: Path) -> Path:
    """Write report.json and report.md; returns the JSON path."""
    json_path = directory / "report.json"
    atomic.write_json(json_path, asdict(report))
    atomic.write_text(directory / "report.md", render_markdown(report))
    return json_path
