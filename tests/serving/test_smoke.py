"""The smoke tests' own failure modes: answers that are not the contract, unreadable known answers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from forkcast import atomic
from forkcast.serving import smoke
from forkcast.serving.contract import EXAMPLE_RECORD
from forkcast.serving.smoke import Golden, GoldenError

GOLDEN = {"model_version": "3", "tolerance": 0.01, "records": [EXAMPLE_RECORD], "expected": [12.5]}


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


def test_known_answers_that_cannot_be_read_are_reported_not_crashed(tmp_path: Path) -> None:
    with pytest.raises(GoldenError, match="cannot read the known answers"):
        Golden.read(tmp_path / "missing.json")
    atomic.write_json(tmp_path / "short.json", {**GOLDEN, "expected": []})
    with pytest.raises(GoldenError, match="as many expected values as records"):
        Golden.read(tmp_path / "short.json")
    atomic.write_json(tmp_path / "partial.json", {"records": [EXAMPLE_RECORD]})
    with pytest.raises(GoldenError, match="model_version"):
        Golden.read(tmp_path / "partial.json")
