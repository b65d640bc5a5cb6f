"""The release's image, built and served for real.

`docker build` of the image context with the arguments the release job passes to `docker buildx build`, then
the `runner` deploy target's own script serves it, and the smoke tests and the golden answers run against it.
The Dockerfile's base (`FROM python:3.11-slim`) is pulled where a registry answers (GitHub). Where none does,
a stand-in is built from Debian packages (`tests/release/base-stand-in/`) under a name of its own, and only
this test's copy of the context builds on it. Without a container engine the tests are skipped with the
reason, and fail in CI (`.ci/run` installs and starts one).

The `self-hosted` target deploys by digest, as from GitHub's registry: the image is pushed to a real local registry
(Debian's `docker-registry`, the distribution project's server) and deployed as 127.0.0.1:PORT/forkcast@sha256:...
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.dataset as ds
import pytest
import yaml

from forkcast import atomic
from forkcast.cli import main
from forkcast.config import load_params
from forkcast.release import records
from forkcast.serving import build

from ..conftest import BIN, ROOT, Built, free_port

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


# The `self-hosted` target ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real image registry on 127.0.0.1 (docker treats loopback registries as insecure: no TLS needed)."""
    server = shutil.which("docker-registry")
    if server is None:
        unavailable("no docker-registry (Debian's package of the distribution registry): install docker-registry")
    root, port = tmp_path_factory.mktemp("registry"), free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    with (root / "registry.log").open("ab") as log:
        process = subprocess.Popen([str(server), "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail(f"docker-registry did not answer: {(root / 'registry.log').read_text()[-2000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def push(engine: Engine, image: str, repository: str) -> str:
    """`image` pushed to `repository`, as the release job pushes: returns repository@sha256:<digest>."""
    engine.run("tag", image, f"{repository}:test")
    engine.run("push", f"{repository}:test", timeout=900)
    digests = json.loads(engine.run("image", "inspect", "--format", "{{json .RepoDigests}}", image).stdout)
    return next(found for found in digests if found.startswith(f"{repository}@sha256:"))


def derived(engine: Engine, base: str, entrypoint: str, repository: str) -> str:
    """The release image with another entrypoint, pushed: a release that never serves."""
    dockerfile = f"FROM {base}\nENTRYPOINT {entrypoint}\n"
    made = subprocess.run(["docker", "build", "--quiet", "--tag", f"{repository}:test", "-"], input=dockerfile,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert made.returncode == 0, made.stderr[-2000:]
    return push(engine, f"{repository}:test", repository)


@pytest.fixture(scope="module")
def releases(engine: Engine, image: dict[str, object], registry: str) -> Iterator[dict[str, str]]:
    """The release image and two that never serve (one exits at once, one never answers), pinned by digest."""
    good = push(engine, str(image["id"]), f"{registry}/forkcast")
    pinned = {
        "good": good,
        "crashes": derived(engine, good, '["sh", "-c", "echo no server in this release >&2; exit 3"]',
                           f"{registry}/forkcast-crashes"),
        "silent": derived(engine, good, '["sleep", "3600"]', f"{registry}/forkcast-silent"),
    }  # fmt: skip
    yield pinned
    for reference in pinned.values():
        engine.run("image", "rm", reference.split("@")[0] + ":test", reference, check=False)


@pytest.fixture(autouse=True)
def _a_machine_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite also runs on GitHub-hosted runners (ci.yml), where the self-hosted target refuses to deploy."""
    monkeypatch.delenv("RUNNER_ENVIRONMENT", raising=False)


def self_hosted(name: str, port: int, image: str, golden: Path, *extra: str) -> list[str]:
    return ["target", "self-hosted", "--env", "staging", "--image", image, "--golden", str(golden),
            "--name", name, "--port", str(port), *extra]  # fmt: skip


def containers(engine: Engine, name: str) -> dict[str, dict[str, Any]]:
    """The containers named `name` or `name-previous`, by name, as docker inspect describes them."""
    listed = engine.run("ps", "--all", "--quiet", "--filter", f"name=^/{name}(-previous)?$").stdout.split()
    found = json.loads(engine.run("container", "inspect", *listed).stdout) if listed else []
    return {str(each["Name"]).lstrip("/"): each for each in found}


def remove(engine: Engine, name: str) -> None:
    engine.run("rm", "--force", name, f"{name}-previous", check=False)
    engine.run("volume", "rm", "--force", f"{name}-inference", check=False)


def logged_rows(engine: Engine, name: str, at_least: int, timeout: float = 30) -> int:
    """Rows of the environment's inference log in the container's volume, once there are `at_least`."""
    volume = engine.run("volume", "inspect", "--format", "{{.Mountpoint}}", f"{name}-inference").stdout.strip()
    log, deadline, rows = Path(volume) / "log", time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if log.is_dir() and any(log.rglob("*.parquet")):
            table = ds.dataset(log, format="parquet", partitioning="hive").to_table(columns=["environment"])
            rows = table.num_rows
            if rows >= at_least:
                assert set(table.column("environment").to_pylist()) == {"staging"}
                return rows
        time.sleep(1)
    pytest.fail(f"the volume holds {rows} inference-log rows, not {at_least}, after {timeout:g} s")


def test_the_self_hosted_target_serves_healthy_and_restarting_and_logs_to_a_volume_that_outlives_the_container(
    engine: Engine, releases: dict[str, str], built: Built, in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    name = f"forkcast-test-{port}"
    model = build.describe(built.tag).model
    environment = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "FORKCAST_IMAGE": releases["good"],
        "FORKCAST_MODEL": model,
        "FORKCAST_GOLDEN": str(built.golden),
        "FORKCAST_PORT": str(port),
        "FORKCAST_CONTAINER": name,
    }
    golden = json.loads(built.golden.read_text())
    resources = load_params(in_tmp / "params.yaml").deploy.staging
    try:
        script = str(ROOT / "deploy" / "targets" / "self-hosted.sh")
        deployed = subprocess.run([script, "staging"], cwd=in_tmp, env=environment, capture_output=True, text=True,
                                  timeout=600, check=False)  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        url = f"http://127.0.0.1:{port}"
        assert deployed.stdout == f"url={url}\nsmoked=true\n"
        first = containers(engine, name)[name]
        host, config, state = first["HostConfig"], first["Config"], first["State"]
        assert host["RestartPolicy"]["Name"] == "unless-stopped"
        assert host["NanoCpus"] == int(resources.cpu * 1e9)
        assert host["Memory"] == resources.memory_mib * 2**20
        assert host["PortBindings"]["3000/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        assert "/readyz" in config["Healthcheck"]["Test"][-1]
        assert state["Health"]["Status"] == "healthy"
        assert f"FORKCAST_MODEL_TAG={model}" in config["Env"]
        answer = httpx.post(f"{url}/predict", json={"records": golden["records"]}, timeout=30).json()
        assert answer["predictions"] == pytest.approx(golden["expected"], abs=golden["tolerance"])
        record = json.loads((in_tmp / "outputs" / "deploy" / "staging.target.json").read_text())
        assert (record["target"], record["image"]) == ("self-hosted", releases["good"])
        assert record["detail"]["container id"] == str(first["Id"])[:12]
        assert (in_tmp / "outputs" / "smoke" / "staging" / "report.json").exists()
        # The smoke tests' requests and ours land in the volume (the service runs as `bentoml`, not root).
        before = logged_rows(engine, name, at_least=len(golden["records"]) + 200)

        # A new release replaces the container; the log, in the volume, stays.
        monkeypatch.setenv("FORKCAST_MODEL", model)
        assert main(self_hosted(name, port, releases["good"], built.golden)) == 0
        after = containers(engine, name)
        assert list(after) == [name]  # the previous one is removed once the new one passed
        assert after[name]["Id"] != first["Id"]
        logged_rows(engine, name, at_least=before + 200)  # the old rows, and the new smoke tests'
    finally:
        remove(engine, name)


def test_a_self_hosted_release_that_fails_is_removed_and_the_previous_container_serves_again(
    engine: Engine, releases: dict[str, str], built: Built, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    name = f"forkcast-test-{port}"
    wrong = in_tmp / "wrong-golden.json"
    golden = json.loads(built.golden.read_text())
    wrong.write_text(json.dumps({**golden, "expected": [value + 1000 for value in golden["expected"]]}))
    try:
        assert main(self_hosted(name, port, releases["good"], built.golden)) == 0
        first = containers(engine, name)[name]["Id"]
        capsys.readouterr()
        for image, golden_file, reason in [
            (releases["good"], wrong, "failed its smoke tests (known answers: golden case"),
            (releases["crashes"], built.golden, "the container exited with code 3 before it was healthy"),
        ]:
            assert main(self_hosted(name, port, image, golden_file)) == 1
            error = capsys.readouterr().err
            assert reason in error
            assert f"the previous image {releases['good']} serves again" in error
            running = containers(engine, name)
            assert list(running) == [name]  # the new one is gone, the previous has its name back
            assert running[name]["Id"] == first
            assert running[name]["State"]["Running"]
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        assert "no server in this release" in error  # the failed container's last log lines
    finally:
        remove(engine, name)


def test_a_first_self_hosted_release_that_never_becomes_ready_leaves_nothing_running(
    engine: Engine, releases: dict[str, str], built: Built, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    name = f"forkcast-test-{port}"
    try:
        assert main(self_hosted(name, port, releases["silent"], built.golden, "--timeout", "12")) == 1
        error = capsys.readouterr().err
        assert "not healthy within 12 s" in error
        assert "nothing ran before, and nothing runs now" in error
        assert containers(engine, name) == {}
        assert not (in_tmp / "outputs" / "deploy" / "staging.target.json").exists()
    finally:
        remove(engine, name)


def test_the_kubernetes_pod_spec_runs_the_real_image_read_only_as_its_user_and_its_probes_answer(
    engine: Engine, image: dict[str, object], built: Built, in_tmp: Path
) -> None:
    """The rendered Deployment's container, translated to docker run: its user, read-only root filesystem, dropped
    capabilities, volumes (as tmpfs), environment and limits. The probes' routes must answer and the smoke tests
    pass, predictions logged and all: what a cluster would run, on the real image (no cluster needed)."""
    from forkcast.targets import kubernetes as k8s

    kubectl = shutil.which("kubectl", path=str(BIN)) or "kubectl"
    manifests = k8s.render(
        "staging", "ghcr.io/octocat/forkcast@sha256:" + "0" * 64, load_params(ROOT / "params.yaml").deploy,
        k8s.Kubectl((kubectl,)), manifests=ROOT / "deploy" / "k8s",
    )  # fmt: skip
    deployment = next(doc for doc in yaml.safe_load_all(manifests) if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    port, name = free_port(), f"forkcast-test-pod-{free_port()}"
    served = container["ports"][0]["containerPort"]
    run = ["run", "--detach", "--name", name, "--read-only", "--user", user, "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--publish", f"127.0.0.1:{port}:{served}",
           "--cpus", str(int(container["resources"]["limits"]["cpu"].removesuffix("m")) / 1000),
           "--memory", container["resources"]["limits"]["memory"].replace("Mi", "m")]  # fmt: skip
    for mount in container["volumeMounts"]:  # emptyDir volumes, writable by the pod's fsGroup
        run += ["--tmpfs", f"{mount['mountPath']}:uid={pod['securityContext']['runAsUser']},"
                f"gid={pod['securityContext']['fsGroup']},mode=0770"]  # fmt: skip
    for variable in container["env"]:
        run += ["--env", f"{variable['name']}={variable['value']}"]
    try:
        engine.run(*run, str(image["id"]))
        url = f"http://127.0.0.1:{port}"
        probes = [container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if all(httpx.get(f"{url}{path}", timeout=2).status_code == 200 for path in probes):
                    break
            except httpx.TransportError:
                pass
            assert engine.run("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true", engine.run(
                "logs", name, check=False
            ).stderr[-3000:]
            time.sleep(1)
        else:
            pytest.fail(f"the probes never answered: {engine.run('logs', name, check=False).stderr[-3000:]}")
        assert main(["smoke", "--url", url, "--golden", str(built.golden)]) == 0
        engine.run("stop", "--time", "30", name)  # SIGTERM, as a pod's end: the log is flushed
        logs = engine.run("logs", name, check=False)
    finally:
        engine.run("rm", "--force", name, check=False)
    output = logs.stdout + logs.stderr
    assert "Read-only file system" not in output
    # The predictions were logged on the pod's volume (bentoml logs the smoke's bad requests' 400s as errors too).
    assert not [line for line in output.splitlines() if "[ERROR]" in line and "inference log" in line]
    workers = [line for line in output.splitlines() if "serving " in line and " with " in line]
    assert len(workers) == int(next(v["value"] for v in container["env"] if v["name"] == "FORKCAST_WORKERS"))
