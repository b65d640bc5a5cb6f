"""`forkcast probe` against the real served bento: health, one timed prediction and BentoML's /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from forkcast.cli import main
from forkcast.monitoring import probe
from forkcast.serving import deploy

from ..conftest import Built, free_port
from ..serving.test_serving import Server, serve

# What BentoML 1.4 serves at /metrics (read off a running service; see forkcast/monitoring/probe.py).
BENTOML_FAMILIES = {
    "bentoml_service_request_total": "counter",
    "bentoml_service_request_duration_seconds": "histogram",
    "bentoml_service_request_in_progress": "gauge",
    "bentoml_service_last_request_timestamp_seconds": "gauge",
}


@pytest.fixture(scope="module")
def server(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = serve(built.tag, tmp_path_factory.mktemp("probe-serve"))
    yield running
    running.stop()


def record(directory: Path, name: str = "adhoc") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / "outputs" / "probe" / f"{name}.json").read_text())
    return data


@pytest.mark.slow
@pytest.mark.integration
def test_a_healthy_service_passes_every_check(
    server: Server, built: Built, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", "--url", server.url, "--budget-ms", "10000"]) == 0
    assert "FAIL" not in capsys.readouterr().out
    written = record(in_tmp)
    assert written["passed"] is True
    assert written["url"] == server.url
    assert [(check["name"], check["passed"]) for check in written["checks"]] == [(n, True) for n in probe.CHECKS]
    assert written["latency_ms"] > 0
    assert written["model_version"] == built.lineage["model_version"]
    assert written["request_id"].startswith(probe.PROBE_REQUEST_PREFIX)
    assert written["metrics"]["served"] is True


@pytest.mark.slow
@pytest.mark.integration
def test_an_impossible_latency_budget_fails_the_latency_check_alone(
    server: Server, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", "--url", server.url, "--budget-ms", "0.001"]) == 1
    captured = capsys.readouterr()
    assert f"probe of {server.url} failed: latency" in captured.err
    assert "FAIL  latency" in captured.out
    written = record(in_tmp)
    assert written["passed"] is False
    assert [check["name"] for check in written["checks"] if not check["passed"]] == ["latency"]
    assert "over the 0.001 ms budget" in written["checks"][3]["detail"]


@pytest.mark.slow
@pytest.mark.integration
def test_the_default_budget_is_monitor_probe_budget_ms(server: Server, in_tmp: Path) -> None:
    params = yaml.safe_load((in_tmp / "params.yaml").read_text())
    params["monitor"]["probe_budget_ms"] = 0.001
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["probe", "--url", server.url]) == 1
    written = record(in_tmp)
    assert written["budget_ms"] == 0.001
    assert [check["name"] for check in written["checks"] if not check["passed"]] == ["latency"]


@pytest.mark.slow
@pytest.mark.integration
def test_metrics_name_bentomls_families_and_count_requests_by_status(server: Server) -> None:
    with httpx.Client(base_url=server.url) as client:
        for _ in range(3):  # the only bad requests this module's server gets
            assert client.post("/predict", json={"records": []}).status_code == 400
    report = probe.probe(server.url, 10_000)
    metrics = report.metrics
    assert report.passed, probe.render_table(report)
    assert BENTOML_FAMILIES.items() <= metrics["families"].items()
    assert metrics["predict_requests"]["400"] == 3
    assert metrics["predict_requests"]["200"] >= 1  # this probe's own prediction, at least
    assert metrics["server_errors"] == 0
    assert metrics["predict_mean_ms"] > 0


def test_a_service_that_does_not_answer_fails_the_probe(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    deploy.save(
        deploy.Deployment(
            environment="production", bento="forkcast:v1-x", model="forkcast-demand:v1-x", port=1, pid=1,
            url=url, inference_log="log", server_log="log", started_at="now",
        )
    )  # fmt: skip
    assert main(["probe", "--env", "production"]) == 1
    assert f"production does not answer at {url}" in capsys.readouterr().err
    written = record(in_tmp, "production")
    assert (written["passed"], written["reachable"], written["environment"]) == (False, False, "production")
    assert [check["name"] for check in written["checks"]] == ["readyz"]
    assert "ConnectError" in written["checks"][0]["detail"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "give exactly one of --url and --env"),
        (["--url", "http://127.0.0.1:1", "--env", "staging"], "give exactly one of --url and --env"),
        (["--env", "prod"], "--env must be one of staging, production, not 'prod'"),
        (["--env", "production"], "nothing is deployed to production: run `forkcast deploy --env production`"),
        (["--url", "127.0.0.1:3000"], "--url must start with http:// or https://"),
        (["--url", "http://127.0.0.1:1", "--budget-ms", "0"], "--budget-ms must be positive"),
    ],
)
def test_bad_usage_probes_nothing(
    args: list[str], words: str, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", *args]) == 2
    assert words in capsys.readouterr().err
    assert not (in_tmp / "outputs" / "probe").exists()


def test_prometheus_text_is_parsed_into_the_counters_worth_a_glance() -> None:
    text = "\n".join(
        [
            "# HELP bentoml_service_request_total Total number of runner RPC",
            "# TYPE bentoml_service_request_total counter",
            'bentoml_service_request_total{endpoint="/predict",http_response_code="200",service_name="f"} 7.0',
            'bentoml_service_request_total{endpoint="/predict",http_response_code="500",service_name="f"} 2.0',
            'bentoml_service_request_total{endpoint="/readyz",http_response_code="503",service_name="f"} 1.0',
            'bentoml_service_request_total{endpoint="/metadata",http_response_code="200",note="a \\"q\\" b"} 4.0',
            "# TYPE bentoml_service_request_duration_seconds histogram",
            'bentoml_service_request_duration_seconds_sum{endpoint="/predict",http_response_code="200"} 0.014',
            'bentoml_service_request_duration_seconds_count{endpoint="/predict",http_response_code="200"} 7.0',
            'bentoml_service_request_duration_seconds_sum{endpoint="/predict",http_response_code="500"} 9.0',
            'bentoml_service_request_duration_seconds_count{endpoint="/predict",http_response_code="500"} 2.0',
            'bentoml_service_request_in_progress{endpoint="/predict"} 3.0',
            "not a sample line",
        ]
    )
    samples = probe.parse_samples(text)
    assert len(samples) == 9
    assert samples[3].labels["note"] == 'a \\"q\\" b'
    assert probe.metric_families(text) == {
        "bentoml_service_request_total": "counter",
        "bentoml_service_request_duration_seconds": "histogram",
    }
    assert probe.summarize_metrics(samples) == {
        "predict_requests": {"200": 7, "500": 2},
        "server_errors": 3,
        "in_progress": 3,
        "predict_mean_ms": 2.0,  # 14 ms over 7 answered requests; the 500s are not counted
    }
