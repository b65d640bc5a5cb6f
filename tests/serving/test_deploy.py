"""Local deployments: what production accepts, running a bento in the background, and the whole release."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from forkcast.config import Params
from forkcast.data.prepare import Splits
from forkcast.model.train import TrainedModel
from forkcast.serving import build, deploy, inference_log
from forkcast.serving.deploy import DeployError, Deployment

from ..conftest import Built, build_bento, free_port, run, run_ok, with_ports


def staging(bento: str = "forkcast:v3-abc", smoke: dict[str, object] | None = None) -> Deployment:
    return Deployment(
        environment="staging", bento=bento, model="forkcast-demand:v3-abc", port=1, pid=1,
        url="http://127.0.0.1:1", inference_log="log", server_log="log", started_at="now", smoke=smoke,
    )  # fmt: skip


PASSED = {"passed": True, "bento": "forkcast:v3-abc"}


@pytest.mark.parametrize(
    ("current", "approved_by", "words"),
    [
        (None, "me", "nothing is deployed to staging"),
        (staging("forkcast:v2-old", {**PASSED, "bento": "forkcast:v2-old"}), "me", "staging runs forkcast:v2-old"),
        (staging(), "me", "has not passed the smoke tests"),
        (staging(smoke={**PASSED, "passed": False}), "me", "has not passed the smoke tests"),
        (staging(smoke={**PASSED, "bento": "forkcast:v2-old"}), "me", "has not passed the smoke tests"),
        (staging(smoke=PASSED), None, "needs an approval"),
    ],
)
def test_production_refuses_what_staging_did_not_pass_or_nobody_approved(
    current: Deployment | None, approved_by: str | None, words: str
) -> None:
    with pytest.raises(DeployError, match=words):
        deploy.check_promotion("forkcast:v3-abc", current, approved_by)


def test_production_takes_the_bento_staging_passed_once_approved() -> None:
    deploy.check_promotion("forkcast:v3-abc", staging(smoke=PASSED), "me")  # no error


@pytest.fixture(scope="module")
def newer(
    built: Built, trained: TrainedModel, splits: Splits, params: Params, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """A second bento, with a newer model, in the same store as `built`."""
    lineage = {**built.lineage, "model_version": "8"}
    return build_bento(
        trained, splits, params, lineage=lineage, golden_cases=5, output_dir=tmp_path_factory.mktemp("newer")
    )


def metadata(url: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/metadata", b"{}", {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


@pytest.mark.slow
@pytest.mark.integration
def test_a_deployment_runs_in_the_background_until_stopped(
    built: Built, newer: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    log = str(tmp_path / "inference")
    model = build.describe(built.tag).model
    first = deploy.start("staging", built.tag, model, port, log)
    try:
        assert deploy.is_ready(first.url)
        assert deploy.load("staging") == first
        # The bento's own model, though a newer one was imported since.
        assert metadata(first.url)["bento_model"] == model
        assert build.describe(newer).model != model
        # It runs the code frozen into the bento, not the working tree's (the project is installed editable).
        frozen = deploy.bento_source(Path(os.environ["BENTOML_HOME"]), built.tag) / "forkcast"
        assert f"code from {frozen}" in Path(first.server_log).read_text()
        again = deploy.start("staging", built.tag, model, port, log)
        assert again.pid == first.pid  # the same bento keeps running: no restart
        with pytest.raises(DeployError, match=f"port {port} for production is taken"):
            deploy.start("production", built.tag, model, port, log)
        deploy.start("production", newer, build.describe(newer).model, free_port(), str(tmp_path / "production-log"))
        body = json.dumps({"records": json.loads(built.golden.read_text())["records"][:2]}).encode()
        request = urllib.request.Request(f"{first.url}/predict", body, {"content-type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
        with urllib.request.urlopen(f"{first.url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        # Its own Prometheus counters: one request, though production started (and served nothing) since.
        served = re.search(r'request_total\{endpoint="/predict",http_response_code="200"[^}]*\} (\S+)', metrics)
        assert served, metrics[:2000]
        assert float(served.group(1)) == 1.0
    finally:
        deploy.stop("production")
        stopped = deploy.stop("staging")
    assert stopped is not None
    assert not deploy.is_running(first.pid)
    assert deploy.load("staging") is None
    assert inference_log.read(log).num_rows == 2  # flushed on the way out


@pytest.mark.slow
@pytest.mark.integration
def test_a_service_that_cannot_start_fails_the_deploy_and_the_previous_one_comes_back(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()
    with pytest.raises(
        DeployError, match=r"while starting(.|\n)*no model forkcast-demand:v0-missing in the BentoML store"
    ):
        deploy.start("staging", built.tag, "forkcast-demand:v0-missing", port, str(tmp_path))
    assert deploy.load("staging") is None  # nothing was running before: nothing is left running
    assert deploy.port_is_free(port)

    model = build.describe(built.tag).model
    deploy.start("staging", built.tag, model, port, str(tmp_path))
    try:
        deploy.record_smoke("staging", True, tmp_path / "report.json")
        with pytest.raises(DeployError, match=f"staging serves {built.tag} again, as before"):
            deploy.start("staging", "forkcast:v0-missing", "forkcast-demand:v0-missing", port, str(tmp_path))
        restored = deploy.load("staging")
        assert restored is not None
        assert (restored.bento, restored.model, restored.smoke_passed) == (built.tag, model, True)
        assert deploy.is_ready(restored.url)
    finally:
        deploy.stop("staging")


@pytest.mark.slow
@pytest.mark.integration
def test_the_release_line_on_a_fresh_clone(project: Path) -> None:
    staging_port, production_port = with_ports(project)
    run_ok(["dvc", "repro", "-q"], project)
    try:
        built = run_ok(["forkcast", "build"], project)
        tag = json.loads((project / "outputs/build/build.json").read_text())["bento"]
        assert f"{tag} built (model version 1" in built.stdout
        assert "reused" in run_ok(["forkcast", "build"], project).stdout  # same model, same bento

        refused = run(["forkcast", "deploy", "--env", "production", "--approve"], project)
        assert refused.returncode == 2
        assert "nothing is deployed to staging" in refused.stderr

        run_ok(["forkcast", "deploy", "--env", "staging"], project)
        unsmoked = run(["forkcast", "deploy", "--env", "production", "--approve"], project)
        assert unsmoked.returncode == 1
        assert "has not passed the smoke tests in staging" in unsmoked.stderr

        smoke = run_ok(["forkcast", "smoke", "--env", "staging"], project)
        assert "FAIL" not in smoke.stdout
        report = json.loads((project / "outputs/smoke/staging/report.json").read_text())
        assert report["passed"]
        assert report["model_version"] == "1"

        unapproved = run(["forkcast", "deploy", "--env", "production"], project)
        assert unapproved.returncode == 1
        assert "needs an approval" in unapproved.stderr
        promoted = run_ok(["forkcast", "deploy", "--env", "production", "--approve"], project)
        assert f"production: {tag} at http://127.0.0.1:{production_port}" in promoted.stdout
        assert "v1 is now aliased 'production'" in promoted.stdout
        run_ok(["forkcast", "smoke", "--env", "production"], project)
        # The registry's production alias now names the same model: building it gives the very same bento.
        from_registry = run_ok(["forkcast", "build", "--alias", "production"], project)
        assert f"{tag} already built, reused (model version 1" in from_registry.stdout
        unknown = run(["forkcast", "build", "--alias", "nope"], project)
        assert unknown.returncode == 2
        assert "no version of forkcast-demand has the alias 'nope'" in unknown.stderr

        status = run_ok(["forkcast", "status"], project).stdout
        assert f"staging    {tag}  http://127.0.0.1:{staging_port}" in status
        assert f"production {tag}  http://127.0.0.1:{production_port}" in status
        assert status.count("ready  smoke passed") == 2
    finally:
        run(["forkcast", "undeploy"], project)
    assert run_ok(["forkcast", "status"], project).stdout.count("not deployed") == 2
    for environment in ("staging", "production"):  # smoke traffic was logged, flushed on stop, and marked
        logged = inference_log.read(str(project / "outputs/inference" / environment)).to_pandas()
        assert len(logged) > 0
        assert logged["request_id"].str.startswith("smoke-").all()


def test_a_busy_port_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DeployError, match=f"port {port} for staging is taken"):
            deploy.start("staging", "forkcast:v1-abc", "forkcast-demand:v1-abc", port, str(tmp_path))


def test_status_exits_1_naming_a_deployed_environment_that_is_down(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record whose server is gone (its pid ended, its port answers nothing): status says DOWN and fails."""
    from forkcast.cli import main

    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid no longer runs
    port = free_port()
    deploy.save(
        Deployment(
            environment="staging", bento="forkcast:v1-abc", model="forkcast-demand:v1-abc", port=port,
            pid=finished.pid, url=f"http://127.0.0.1:{port}",
            inference_log="outputs/inference/staging", server_log="outputs/deploy/staging.log",
            started_at="2026-12-05T10:00:00+00:00",
        )
    )  # fmt: skip
    assert main(["status"]) == 1
    captured = capsys.readouterr()
    assert f"staging    forkcast:v1-abc  http://127.0.0.1:{port}" in captured.out
    assert "DOWN" in captured.out
    assert "production not deployed" in captured.out
    assert "staging deployed but down: start again with `forkcast deploy --env staging`" in captured.err


def answers(url: str) -> bool:
    """Anything answers /readyz at `url` (whoever serves it)."""
    return deploy.is_ready(url)


@pytest.mark.slow
@pytest.mark.integration
def test_workers_left_behind_by_a_killed_server_are_found_reported_and_ended(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The fault measured: after `kill -9` of the server, its workers served on; status said DOWN, deploy failed
    on the taken port after deleting the record, and undeploy then said "nothing deployed"."""
    from forkcast.cli import main

    monkeypatch.chdir(tmp_path)
    port = free_port()
    model = build.describe(built.tag).model
    first = deploy.start("staging", built.tag, model, port, str(tmp_path / "log-1"))
    try:
        workers = [process.pid for process in deploy.processes_of("staging") if process.pid != first.pid]
        assert len(workers) == 2  # the service's two workers, in sessions of their own
        os.kill(first.pid, 9)
        psutil.Process(first.pid).wait(timeout=10)  # reaped: it is this test's child (a CLI's is init's)
        assert answers(first.url)  # the orphaned workers still serve
        assert main(["status"]) == 1
        shown = capsys.readouterr()
        assert "ORPHANED" in shown.out
        assert f"workers {workers[0]}, {workers[1]}" in shown.out

        # Redeploying ends the orphans (the port is free again) and starts afresh; a new log location counts.
        second = deploy.start("staging", built.tag, model, port, str(tmp_path / "log-2"))
        assert second.pid != first.pid
        assert second.inference_log == str(tmp_path / "log-2")
        assert not any(deploy.is_running(pid) for pid in workers)
        assert deploy.health("staging").state == "ready"

        # The record lost while the server runs: status reports the processes, undeploy ends them.
        os.kill(second.pid, 9)
        psutil.Process(second.pid).wait(timeout=10)
        deploy.record_path("staging").unlink()
        assert deploy.health("staging").state == "UNRECORDED"
        assert main(["undeploy", "--env", "staging"]) == 0
        assert "nothing recorded, but ended the processes that served it" in capsys.readouterr().out
    finally:
        deploy.stop("staging")
    assert deploy.processes_of("staging") == []
    assert not answers(first.url)
    assert deploy.port_is_free(port)


def test_one_deploy_or_stop_at_a_time_per_environment(in_tmp: Path) -> None:
    held = pytest.raises(DeployError, match=r"staging is being deployed or stopped by pid \d+")
    said: list[str] = []
    with deploy.exclusive("staging"):
        with held, deploy.exclusive("staging", wait=0.3, waiting=said.append):
            pass
        with deploy.exclusive("production", wait=0.3):  # another environment is not held up
            pass
    assert len(said) == 1  # said once, not at every poll
    assert said[0].startswith("staging is being deployed or stopped by pid ")
    assert said[0].endswith(": waiting for it (up to 0 s)")
    with deploy.exclusive("staging", wait=0.3):  # released
        pass


def test_a_smoke_result_is_not_recorded_on_a_server_that_replaced_the_tested_one(in_tmp: Path) -> None:
    tested = replace(staging("forkcast:v3-abc"), started_at="2026-12-05T10:00:00+00:00")
    deploy.save(replace(tested, bento="forkcast:v4-def", pid=2, started_at="2026-12-05T10:01:00+00:00"))
    with pytest.raises(DeployError, match=r"staging was redeployed while the smoke tests ran \(forkcast:v3-abc then"):
        deploy.record_smoke("staging", True, in_tmp / "report.json", tested=tested)
    recorded = deploy.load("staging")
    assert recorded is not None
    assert recorded.smoke is None  # the new server's record carries no result it did not earn
    deploy.save(tested)
    assert deploy.record_smoke("staging", True, in_tmp / "report.json", tested=tested).smoke_passed
