"""The `self-hosted` target's pure parts: what it asks docker to run, and the input it refuses before touching
anything. The target itself runs against a real docker engine in test_image.py."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from forkcast.cli import main
from forkcast.config import EnvironmentResources
from forkcast.targets.common import TargetError
from forkcast.targets.self_hosted import HEALTH_PROBE, VOLUME_MOUNT, Release, client_environment, passed_names, plan
from forkcast.targets.self_hosted import run_arguments as arguments

DIGEST = "sha256:" + "ab" * 32
IMAGE = f"ghcr.io/octocat/forkcast@{DIGEST}"
RESOURCES = EnvironmentResources(cpu=2, memory_mib=1536)


def planned(environ: dict[str, str] | None = None, **changes: object) -> Release:
    given: dict[str, object] = {"name": "forkcast-staging", "port": 3101, "resources": RESOURCES} | changes
    return plan("staging", IMAGE, environ=environ or {}, **given)  # type: ignore[arg-type]


def options(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]


def test_the_container_restarts_is_health_checked_limited_and_published_on_loopback_only() -> None:
    release = planned({"FORKCAST_MODEL": "forkcast-demand:v7"})
    args = arguments(release, [], rotate_logs=True)
    assert args[:4] == ["run", "--detach", "--name", "forkcast-staging"]
    assert args[-1] == IMAGE
    assert options(args, "--restart") == ["unless-stopped"]
    assert options(args, "--publish") == ["127.0.0.1:3101:3000"]
    assert options(args, "--cpus") == ["2"]
    assert options(args, "--memory") == ["1536m"]
    assert options(args, "--health-cmd") == [HEALTH_PROBE]
    assert HEALTH_PROBE.startswith("python ")  # the image has no curl
    assert "/readyz" in HEALTH_PROBE
    assert options(args, "--volume") == [f"forkcast-staging-inference:{VOLUME_MOUNT}"]
    assert options(args, "--log-opt") == ["max-size=20m", "max-file=5"]
    env = dict(value.split("=", 1) for value in options(args, "--env"))
    assert env == {
        "FORKCAST_ENVIRONMENT": "staging",
        "FORKCAST_WORKERS": "2",  # one per whole core
        "OMP_NUM_THREADS": "1",
        "BENTOML_DO_NOT_TRACK": "True",
        "FORKCAST_MODEL_TAG": "forkcast-demand:v7",
        "FORKCAST_INFERENCE_LOG": f"{VOLUME_MOUNT}/log",
        "FORKCAST_INFERENCE_SPILL": f"{VOLUME_MOUNT}/spill",
    }
    assert "--log-opt" not in arguments(release, [], rotate_logs=False)  # a logging driver that takes no such options


def test_without_a_model_tag_the_image_serves_its_own_model() -> None:
    env = options(arguments(planned({"FORKCAST_MODEL": ""}), [], rotate_logs=False), "--env")
    assert not any(value.startswith("FORKCAST_MODEL_TAG") for value in env)


def test_secrets_reach_the_container_by_name_never_on_the_command_line() -> None:
    environ = {
        "FORKCAST_API_TOKEN": "s3cret-token",
        "FORKCAST_INFERENCE_LOG": "s3://bucket/inference/",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt",  # a path of this machine: not for the container
        "AWS_REGION": "",  # set but empty (an unset CI variable): not passed
    }
    release = planned(environ)
    assert release.sink == "s3://bucket/inference/staging"  # one prefix per environment, as `forkcast deploy`
    passed = passed_names(release, environ)
    assert passed == ["FORKCAST_API_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    args = arguments(release, passed, rotate_logs=False)
    assert not any(secret in arg for arg in args for secret in ("s3cret-token", "very-secret", "AKIAEXAMPLE"))
    assert set(options(args, "--env")) >= {*passed, "FORKCAST_INFERENCE_LOG"}
    assert client_environment(release, environ)["FORKCAST_INFERENCE_LOG"] == "s3://bucket/inference/staging"


def test_the_log_stays_in_the_volume_without_an_s3_uri_and_aws_credentials_stay_home() -> None:
    environ = {"FORKCAST_INFERENCE_LOG": "outputs/inference", "AWS_SECRET_ACCESS_KEY": "very-secret"}
    release = planned(environ)
    assert release.sink is None
    assert passed_names(release, environ) == []
    assert f"FORKCAST_INFERENCE_LOG={VOLUME_MOUNT}/log" in options(arguments(release, [], rotate_logs=False), "--env")


@pytest.mark.parametrize("image", ["ghcr.io/octocat/forkcast:v7", f"ghcr.io/octocat/forkcast@{DIGEST[:20]}", ""])
def test_an_image_not_pinned_by_digest_is_refused(image: str) -> None:
    with pytest.raises(TargetError, match="not pinned by digest") as refused:
        plan("staging", image, name="forkcast-staging", port=3101, resources=RESOURCES, environ={})
    assert refused.value.usage


@pytest.mark.parametrize("name", ["forkcast staging", "-forkcast", "forkcast/staging", "forkcast-staging-previous"])
def test_a_container_name_docker_refuses_or_that_names_a_predecessor_is_refused(name: str) -> None:
    with pytest.raises(TargetError, match="not usable") as refused:
        planned(name=name)
    assert refused.value.usage


def test_a_github_hosted_runner_is_refused_its_containers_end_with_the_job() -> None:
    with pytest.raises(TargetError, match="set the variable FORKCAST_RUNNER_STAGING") as refused:
        planned({"RUNNER_ENVIRONMENT": "github-hosted"})
    assert refused.value.usage
    assert planned({"RUNNER_ENVIRONMENT": "self-hosted"}).name == "forkcast-staging"


def test_names_follow_the_container() -> None:
    release = planned(name="forkcast-test-1")
    assert (release.previous, release.volume) == ("forkcast-test-1-previous", "forkcast-test-1-inference")
    assert release.local_url == "http://127.0.0.1:3101"


@pytest.fixture
def docker_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `docker` first on PATH that only notes that it was called."""
    calls = tmp_path / "docker-calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    return calls


def test_the_command_refuses_an_unpinned_image_with_exit_2_and_touches_no_container(
    in_tmp: Path, docker_calls: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = in_tmp / "golden.json"
    golden.write_text("{}")
    code = main(["target", "self-hosted", "--env", "staging", "--image", "ghcr.io/octocat/forkcast:latest",
                 "--golden", str(golden)])  # fmt: skip
    assert code == 2
    assert "not pinned by digest" in capsys.readouterr().err
    assert not docker_calls.exists()


def test_the_command_refuses_unreadable_known_answers_with_exit_2_and_touches_no_container(
    in_tmp: Path, docker_calls: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_tmp / "golden.json").write_text(json.dumps({"records": []}))
    for golden in ("golden.json", "missing.json"):
        code = main(["target", "self-hosted", "--env", "staging", "--image", IMAGE, "--golden", golden])
        assert code == 2
        assert "known answers" in capsys.readouterr().err
    assert main(["target", "self-hosted", "--env", "qa", "--image", IMAGE]) == 2
    assert not docker_calls.exists()
    assert not (in_tmp / "outputs" / "deploy").exists()
