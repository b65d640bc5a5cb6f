"""The release's image, built and served for real.

`docker build` of the image context with the arguments the release job passes to `docker buildx build`, then
the `runner` deploy target's own script serves it, and the smoke tests and the golden answers run against it.
The Dockerfile's base (`FROM python:3.11-slim`) is pulled where a registry answers (GitHub). Where none does,
a stand-in is built from Debian packages (`tests/release/base-stand-in/`) under a name of its own, and only
this test's copy of the context builds on it. Without a container engine the tests are skipped with the
reason, and fail in CI (`.ci/run` installs and starts one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from forkcast import atomic
from forkcast.cli import main
from forkcast.release import records
from forkcast.serving import build

from ..conftest import ROOT, Built, free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STAND_IN = Path(__file__).parent / "base-stand-in"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Engine:
    """A docker client that builds with BuildKit (the bento's Dockerfile mounts a cache), and how to call it."""

    build: list[str]
    environment: dict[str, str]

    def run(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args[:3])} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        return result


def unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"no container engine in CI: {reason} (.ci/run installs and starts one)")
    pytest.skip(reason)


def builder() -> tuple[list[str], dict[str, str]] | None:
    """`docker buildx build` where buildx is installed; else a client older than 23, which builds with BuildKit
    itself when DOCKER_BUILDKIT=1 (newer ones need buildx for that)."""
    if subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "buildx", "build", "--load"], {}
    for client in dict.fromkeys(filter(None, [shutil.which("docker"), "/usr/bin/docker"])):
        answer = subprocess.run(
            [client, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True, check=False
        )
        major = re.match(r"\d+", answer.stdout.strip())
        if major and int(major[0]) < 23:
            return [client, "build"], {"DOCKER_BUILDKIT": "1"}
    return None


@pytest.fixture(scope="module")
def engine() -> Engine:
    if shutil.which("docker") is None:
        unavailable("no docker client")
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if info.returncode != 0:
        unavailable(f"no container engine answers: {info.stderr.strip()[-300:]}")
    found = builder()
    if found is None:
        unavailable("no docker client here builds with BuildKit: install docker-buildx")
    command, environment = found  # type: ignore[misc]
    return Engine(command, environment)


def base_of(context: Path) -> str:
    dockerfile = (context / "env" / "docker" / "Dockerfile").read_text()
    found = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert found, dockerfile[:500]
    return found[1]


STAND_IN_TAG = "forkcast-test/python-stand-in:3.11"  # never the real name: nothing else builds on it by mistake


def ensure_base(engine: Engine, base: str, scratch: Path) -> str:
    """The base image to build on: `base` itself when the engine has it or can pull it (as on GitHub); else a
    stand-in made from Debian packages, under a name of its own. Returns the image to build FROM."""
    if engine.run("image", "inspect", base, check=False).returncode == 0:
        return base
    if engine.run("pull", "--quiet", base, check=False, timeout=300).returncode == 0:
        return base
    if engine.run("image", "inspect", STAND_IN_TAG, check=False).returncode == 0:
        return STAND_IN_TAG
    if shutil.which("debootstrap") is None:
        unavailable(f"{base} cannot be pulled and debootstrap, which would make a stand-in, is missing")
    root = scratch / "rootfs"
    debootstrap = [
        "debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates",
        "bookworm", str(root), DEBIAN_MIRROR,
    ]  # fmt: skip
    made = subprocess.run(debootstrap, capture_output=True, text=True, timeout=900, check=False)
    if made.returncode != 0:
        unavailable(f"debootstrap could not make a base image: {made.stdout[-500:]}{made.stderr[-500:]}")
    archive = scratch / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    imported = "forkcast-test/debian-python:bookworm"
    with archive.open("rb") as stream:
        subprocess.run(["docker", "import", "-", imported], stdin=stream, capture_output=True, check=True)
    context = scratch / "stand-in"
    shutil.copytree(STAND_IN, context)
    shutil.copy(CA_BUNDLE if CA_BUNDLE.exists() else __import__("certifi").where(), context / "ca-certificates.crt")
    engine.run("build", "--quiet", "--build-arg", f"BASE={imported}", "--tag", STAND_IN_TAG, str(context))
    return STAND_IN_TAG


@pytest.fixture(scope="module")
def image(engine: Engine, built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The release's image of the session's bento, built as the release job builds it."""
    scratch = tmp_path_factory.mktemp("image")
    record = atomic.read_json(built.output_dir / "build.json")
    context = records.image_context(built.tag, scratch / "image-context")
    base = ensure_base(engine, base_of(context), scratch)
    if base != base_of(context):  # only this test's copy of the context builds on the stand-in
        dockerfile = context / "env" / "docker" / "Dockerfile"
        dockerfile.write_text(dockerfile.read_text().replace(f"FROM {base_of(context)} ", f"FROM {base} ", 1))
    plan = records.plan_image(
        record, context, "ghcr.io/octocat/forkcast", source="https://github.com/octocat/forkcast", revision="c0ffee"
    )
    identity = scratch / "image-id"
    command = [*engine.build, "--iidfile", str(identity), *plan.buildx_args()]
    built_image = subprocess.run(
        command, env={**os.environ, **engine.environment}, capture_output=True, text=True, timeout=1800, check=False
    )
    assert built_image.returncode == 0, built_image.stdout[-3000:] + built_image.stderr[-3000:]
    image_id = identity.read_text().strip()
    yield {"id": image_id, "plan": plan, "base": base, "record": record}
    engine.run("image", "rm", "--force", image_id, check=False)


def test_the_image_carries_the_lineage_labels_and_the_pinned_environment(
    engine: Engine, image: dict[str, object], built: Built
) -> None:
    plan = image["plan"]
    assert isinstance(plan, records.ImagePlan)
    inspected = json.loads(engine.run("image", "inspect", str(image["id"])).stdout)[0]
    labels = inspected["Config"]["Labels"]
    for key, value in plan.labels.items():
        assert labels[key] == value, key
    assert labels["dev.forkcast.bento"] == built.tag
    assert set(plan.tags) <= set(inspected["RepoTags"])
    # Every package the service imports, at the bento's pin (the lock's), installed in the image.
    name, _, version = built.tag.partition(":")
    pins = (Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version / "env/python/requirements.txt").read_text()
    listed = engine.run("run", "--rm", "--entrypoint", "uv", str(image["id"]), "pip", "freeze",
                        "--python", "/app/.venv/bin/python").stdout  # fmt: skip
    installed = {line.lower() for line in listed.split()}
    missing = [pin for pin in pins.split() if pin.lower() not in installed]
    assert not missing, f"not installed at the pinned version: {missing}"


def test_the_runner_target_serves_the_image_which_passes_the_smoke_tests_with_the_golden_answers(
    engine: Engine, image: dict[str, object], built: Built, in_tmp: Path
) -> None:
    port = free_port()
    container = f"forkcast-test-{port}"
    environment = {
        **os.environ,
        "FORKCAST_IMAGE": str(image["id"]),
        "FORKCAST_MODEL": build.describe(built.tag).model,
        "FORKCAST_PORT": str(port),
        "FORKCAST_CONTAINER": container,
    }
    try:
        deployed = subprocess.run(
            [str(ROOT / "deploy" / "targets" / "runner.sh"), "staging"],
            env=environment, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        url = deployed.stdout.strip().removeprefix("url=")
        assert url == f"http://127.0.0.1:{port}"
        assert main(["smoke", "--url", url, "--golden", str(built.golden)]) == 0
        golden = json.loads(built.golden.read_text())
        answer = httpx.post(f"{url}/predict", json={"records": golden["records"]}, timeout=30).json()
        metadata = httpx.post(f"{url}/metadata", json={}, timeout=10).json()
    finally:
        logs = engine.run("logs", container, check=False)
        engine.run("rm", "--force", container, check=False)
    assert answer["predictions"] == pytest.approx(golden["expected"], abs=golden["tolerance"])
    assert metadata["bento_model"] == build.describe(built.tag).model
    assert metadata["model_version"] == built.lineage["model_version"]
    assert "code from /home/bentoml/bento/src/forkcast/serving" in logs.stdout + logs.stderr
    assert (in_tmp / "outputs" / "smoke" / "adhoc" / "report.json").exists()
