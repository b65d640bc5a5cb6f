"""The smoke tests' own failure modes: answers that are not the contract, unreadable known answers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkcast import atomic
from forkcast.config import Params
from forkcast.data.declaration import Target, load
from forkcast.data.prepare import Splits
from forkcast.serving import smoke
from forkcast.serving.contract import TOKEN_ENV
from forkcast.serving.smoke import Golden, GoldenError

from ..conftest import ROOT

INPUTS = load(ROOT / "dataset.yaml").inputs()
RECORD = {
    "season": 4, "hr": 8, "holiday": 0, "weekday": 3, "workingday": 1, "weathersit": "clear",
    "temp": 0.3, "atemp": 0.31, "hum": 0.6, "windspeed": 0.15, "month": 12,
}  # fmt: skip
GOLDEN = {
    "model_version": "3", "tolerance": 0.01, "records": [RECORD], "expected": [12.5],
    "inputs": INPUTS.model_dump(mode="json"),
}  # fmt: skip


class AlwaysHello(http.server.BaseHTTPRequestHandler):
    """A web server that answers 200 and a plain-text greeting to everything."""

    def _hello(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    do_GET = do_POST = _hello

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def hello_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), AlwaysHello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_up_but_not_the_service_fails_every_contract_check(hello_server: str) -> None:
    suite = smoke.SmokeSuite(Golden.from_dict(GOLDEN), latency_requests=10, p95_budget_ms=10_000)
    report = smoke.run(hello_server, suite)
    results = {check.name: check for check in report.checks}
    assert not report.passed
    assert results["health"].passed  # it does answer 200
    for name in ("metadata", "contract", "known answers", "bad requests get 400", "latency budget"):
        assert not results[name].passed, name
    assert "JSONDecodeError" in results["contract"].detail or "json" in results["contract"].detail.lower()
    assert "expected 400" in results["bad requests get 400"].detail
    assert "# Smoke tests: FAILED" in smoke.render_markdown(report)


def test_a_service_that_answers_without_the_token_fails_the_401_check_only_when_a_token_is_set(
    hello_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite = smoke.SmokeSuite(Golden.from_dict(GOLDEN), latency_requests=1, p95_budget_ms=10_000)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    unset = {check.name: check for check in smoke.run(hello_server, suite).checks}["no token gets 401"]
    assert unset.passed
    assert f"not checked: no {TOKEN_ENV} here" in unset.detail
    monkeypatch.setenv(TOKEN_ENV, "t0ken")
    checked = {check.name: check for check in smoke.run(hello_server, suite).checks}["no token gets 401"]
    assert not checked.passed
    assert "without the token: expected 401 naming the Authorization header, got 200" in checked.detail


def test_known_answers_that_cannot_be_read_are_reported_not_crashed(tmp_path: Path) -> None:
    with pytest.raises(GoldenError, match="cannot read the known answers"):
        Golden.read(tmp_path / "missing.json")
    atomic.write_json(tmp_path / "short.json", {**GOLDEN, "expected": []})
    with pytest.raises(GoldenError, match="as many expected values as records"):
        Golden.read(tmp_path / "short.json")
    atomic.write_json(tmp_path / "partial.json", {"records": [RECORD]})
    with pytest.raises(GoldenError, match="model_version"):
        Golden.read(tmp_path / "partial.json")


def test_known_answers_without_their_contract_are_refused(tmp_path: Path) -> None:
    atomic.write_json(tmp_path / "old.json", {k: v for k, v in GOLDEN.items() if k != "inputs"})
    with pytest.raises(GoldenError, match="inputs"):
        Golden.read(tmp_path / "old.json")


@pytest.mark.datasets
def test_the_bad_requests_are_made_from_the_contract(params: Params, splits: Splits) -> None:
    inputs = params.dataset.inputs()
    record = splits.test[list(inputs.names)].head(1).to_dict(orient="records")[0]
    cases = {label: (body, field) for label, body, field in smoke.bad_requests(record, inputs)}
    body, field = cases["missing field"]
    assert field == inputs.names[0]
    assert field not in body["records"][0]
    body, field = cases["extra field"]
    assert field == inputs.target.name
    body, field = cases["out of range"]
    feature = inputs.feature(field)
    value = body["records"][0][field]
    allowed = feature.categories or ()
    assert value not in allowed
    assert feature.max is None or value > feature.max
    body, field = cases["wrong type"]
    assert type(body["records"][0][field]) is not type(record[field])


TEMPERATURE = Target(name="temperature", type="float", unit="degrees C", min=-40.0, max=50.0)
UNBOUNDED = Target(name="balance", type="float", unit="EUR")


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [
        (-12.5, TEMPERATURE, True),  # a negative target is as valid as any inside its range
        (-40, TEMPERATURE, True),
        (-40.5, TEMPERATURE, False),
        (50.1, TEMPERATURE, False),
        (-1e9, UNBOUNDED, True),
        (float("nan"), UNBOUNDED, False),
        (float("inf"), UNBOUNDED, False),
        (True, UNBOUNDED, False),  # JSON true is not a number
        ("3.0", UNBOUNDED, False),
        (None, UNBOUNDED, False),
    ],
)
def test_a_prediction_is_a_finite_number_in_the_targets_range(value: object, target: Target, expected: bool) -> None:
    assert smoke.within(value, target) is expected
