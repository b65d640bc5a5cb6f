"""The `self-hosted` target: a machine of your own, registered as a GitHub self-hosted runner, serves the image under
docker, the only thing it needs installed.

One container per environment, `<name>` (`forkcast-<environment>`), published on 127.0.0.1:<port>; it restarts with
the machine and the docker daemon (`--restart unless-stopped`), docker checks `/readyz` from inside it, and its
inference log goes to a named volume, `<name>-inference`, which outlives every container (or to S3 when
FORKCAST_INFERENCE_LOG is an s3:// URI). CPU, memory, workers and threads come from `deploy.<environment>`.

A release replaces the running container without losing it: the running one is stopped and renamed
`<name>-previous`, the new one starts on the same port, and must become healthy and pass the smoke tests; only then
is the previous removed. Otherwise the new container is removed (its last log lines printed first) and the previous
is renamed back, started and waited for, and the deploy fails saying so.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forkcast.config import EnvironmentResources, Params
from forkcast.serving.inference_log import SINK_ENV
from forkcast.targets.common import Deployed, TargetError, failed_checks, pinned_image, smoke_dir, smoke_test

TARGET = "self-hosted"
CONTAINER_PORT = 3000
PREVIOUS = "-previous"
VOLUME_MOUNT = "/var/lib/forkcast/inference"  # the log in log/, the rows its sink refused in spill/
# The image has no curl: its own Python asks. Docker runs this every 5 s; a failing call exits 1.
HEALTH_PROBE = "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=4)\""
HEALTH_OPTIONS = ("--health-interval", "5s", "--health-timeout", "5s", "--health-retries", "3",
                  "--health-start-period", "60s")  # fmt: skip
STOP_SECONDS = 30  # a stopping service flushes its inference log: give it time before docker kills it
LOG_ROTATION = ("--log-opt", "max-size=20m", "--log-opt", "max-file=5")  # access logs would fill the disk
ROTATING_DRIVERS = {"json-file", "local"}  # the drivers that take those options
PASSED_THROUGH = (  # from the target's environment when set, by name: their values never reach a command line
    "FORKCAST_API_TOKEN",
    "FORKCAST_INFERENCE_FLUSH_SECONDS",
    "FORKCAST_INFERENCE_BUFFER_ROWS",
    "FORKCAST_BACKEND",
)
ACCESS_LOG = "(scheme=http,"  # in each of bentoml's access-log lines
S3_SETTINGS = (  # handed over only with an s3:// log; paths (AWS_CA_BUNDLE...) would name files of this machine
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)  # fmt: skip
CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,100}$")  # docker's rule for container and volume names


@dataclass(frozen=True)
class Release:
    """What to run where: one pinned image as one environment's container."""

    environment: str
    image: str  # repository@sha256:<digest>
    name: str  # the container; its volume and its predecessor are named after it
    port: int
    resources: EnvironmentResources
    model: str | None = None  # FORKCAST_MODEL_TAG: the bento's model (the image's default when None)
    sink: str | None = None  # an s3:// inference log; None: the volume

    @property
    def previous(self) -> str:
        return self.name + PREVIOUS

    @property
    def volume(self) -> str:
        return f"{self.name}-inference"

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def plan(
    environment: str, image: str, *, name: str, port: int, resources: EnvironmentResources, environ: Mapping[str, str]
) -> Release:
    """The release to run, or TargetError for input no deploy should start with (nothing is touched yet)."""
    pinned_image(image)
    if environ.get("RUNNER_ENVIRONMENT") == "github-hosted":  # its containers end with the job
        raise TargetError(
            f"the self-hosted target runs on a machine of your own, not on a GitHub-hosted runner: set the variable "
            f"FORKCAST_RUNNER_{environment.upper()} to your runner's label (README)",
            usage=True,
        )
    if not CONTAINER_NAME.match(name) or name.endswith(PREVIOUS):
        raise TargetError(
            f"container name '{name}' is not usable: letters, digits and _ . - (starting with a letter or digit), "
            f"not ending in '{PREVIOUS}', which names the container a release replaces",
            usage=True,
        )
    sink = environ.get(SINK_ENV) or None  # set but empty (an unset CI variable): the volume
    if sink is not None and not sink.startswith("s3://"):
        sink = None  # a directory of this machine's: the container writes to its volume instead
    return Release(
        environment, image, name, port, resources,
        model=environ.get("FORKCAST_MODEL") or None,
        sink=f"{sink.rstrip('/')}/{environment}" if sink else None,  # one prefix per environment, as locally
    )  # fmt: skip


def passed_names(release: Release, environ: Mapping[str, str]) -> list[str]:
    """The variables handed to the container by name, when set: the service's own settings, and the S3 log's
    credentials, region and endpoint when it writes to S3."""
    return [name for name in PASSED_THROUGH + (S3_SETTINGS if release.sink else ()) if environ.get(name)]


def run_arguments(release: Release, passed: list[str], *, rotate_logs: bool) -> list[str]:
    """`docker run`'s arguments for `release`. Variables in `passed` (and the S3 sink) are given by name: docker
    reads their values from its own environment (`client_environment`)."""
    resources = release.resources
    sink = release.sink or f"{VOLUME_MOUNT}/log"
    settings = {
        "FORKCAST_ENVIRONMENT": release.environment,
        "FORKCAST_WORKERS": str(resources.workers),
        "OMP_NUM_THREADS": str(resources.threads_per_worker),
        "BENTOML_DO_NOT_TRACK": "True",
        "FORKCAST_INFERENCE_SPILL": f"{VOLUME_MOUNT}/spill",
        **({"FORKCAST_MODEL_TAG": release.model} if release.model else {}),
        **({} if release.sink else {SINK_ENV: sink}),
    }
    by_name = [*passed, *([SINK_ENV] if release.sink else [])]
    return [
        "run", "--detach", "--name", release.name,
        "--restart", "unless-stopped",
        "--publish", f"127.0.0.1:{release.port}:{CONTAINER_PORT}",
        "--cpus", f"{resources.cpu:g}", "--memory", f"{resources.memory_mib}m",
        "--health-cmd", HEALTH_PROBE, *HEALTH_OPTIONS,
        "--volume", f"{release.volume}:{VOLUME_MOUNT}",
        "--label", f"dev.forkcast.environment={release.environment}",
        "--label", f"dev.forkcast.image={release.image}",
        *(LOG_ROTATION if rotate_logs else ()),
        *(arg for key, value in settings.items() for arg in ("--env", f"{key}={value}")),
        *(arg for key in by_name for arg in ("--env", key)),
        release.image,
    ]  # fmt: skip


def client_environment(release: Release, environ: Mapping[str, str]) -> dict[str, str]:
    """The docker client's environment: the target's, with the S3 sink as the container must see it."""
    return {**environ, **({SINK_ENV: release.sink} if release.sink else {})}


class Docker:
    """The docker CLI: each call returns its output, or raises TargetError with docker's own message."""

    def __init__(self, command: str = "docker", environ: Mapping[str, str] | None = None) -> None:
        self.command = command
        self.environ = dict(environ) if environ is not None else None

    def __call__(self, *args: str, timeout: float = 120) -> str:
        try:
            done = subprocess.run(
                [self.command, *args], capture_output=True, text=True, timeout=timeout, env=self.environ, check=False
            )
        except FileNotFoundError as exc:
            raise TargetError(f"no docker client here ({self.command}): install docker first", usage=True) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TargetError(f"docker {args[0]} failed: {exc}") from exc
        if done.returncode != 0:
            raise TargetError(f"docker {args[0]} failed: {(done.stderr or done.stdout).strip()[-1000:]}")
        return done.stdout.strip()

    def inspect(self, container: str) -> dict[str, Any] | None:
        try:
            found: list[dict[str, Any]] = json.loads(self("container", "inspect", container))
        except TargetError:
            return None
        return found[0]

    def logs(self, container: str, lines: int = 40) -> str:
        """The last `lines` of the container's log that are not access-log lines (the smoke tests make hundreds)."""
        try:
            done = subprocess.run(
                [self.command, "logs", "--tail", str(lines * 20), container],
                capture_output=True, text=True, timeout=30, env=self.environ, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"(no log: {exc})"
        kept = [line for line in (done.stdout + done.stderr).splitlines() if ACCESS_LOG not in line]
        return "\n".join(kept[-lines:])


Say = Callable[[str], None]


class Rejected(Exception):
    """The new container did not start, become healthy or pass its smoke tests."""


@dataclass(frozen=True)
class Previous:
    """The container a release replaces, stopped and set aside under `<name>-previous`."""

    id: str
    image: str


def ensure_image(docker: Docker, image: str, say: Say) -> None:
    """The image on this machine: pulled unless a pull or a build already brought it."""
    try:
        docker("image", "inspect", "--format", "{{.Id}}", image)
        return
    except TargetError:
        pass
    say(f"pulling {image}")
    try:
        docker("pull", "--quiet", image, timeout=1800)
    except TargetError as exc:
        raise TargetError(
            f"this machine cannot pull {image} ({exc}); a private package needs `docker login` on it first. "
            "Nothing was changed"
        ) from exc


def prepare_volume(docker: Docker, release: Release) -> None:
    """Create the environment's volume if new, and make it the image's user's: a new volume belongs to root, and
    the service runs as its image's user (`bentoml`). A short container of the new image, as root, sees to it."""
    docker("volume", "create", "--label", f"dev.forkcast.environment={release.environment}", release.volume)
    user = docker("image", "inspect", "--format", "{{.Config.User}}", release.image)
    if user.split(":")[0] in {"", "root", "0"}:
        return
    script = (  # $1: a user's name or uid, as the image gives it
        'user=${1%%:*}; uid=$(id -u "$user" 2>/dev/null || echo "$user"); '
        'gid=$(id -g "$user" 2>/dev/null || echo "$uid"); '
        '[ "$(stat -c %u:%g /volume)" = "$uid:$gid" ] || chown -R "$uid:$gid" /volume'
    )
    docker(
        "run", "--rm", "--user", "0", "--network", "none", "--entrypoint", "sh",
        "--volume", f"{release.volume}:/volume", release.image, "-c", script, "sh", user,
    )  # fmt: skip


def set_aside(docker: Docker, release: Release, say: Say) -> Previous | None:
    """Stop the running container and rename it `<name>-previous` (a predecessor left by an interrupted deploy is
    kept when nothing else runs, removed when something does)."""
    current, left = docker.inspect(release.name), docker.inspect(release.previous)
    if current is not None and left is not None:
        say(f"removing {release.previous}, left by an earlier deploy")
        docker("rm", "--force", release.previous)
    kept = current or left
    if kept is None:
        return None
    previous = Previous(str(kept["Id"]), str(kept["Config"]["Image"]))
    say(f"stopping {kept['Name'].lstrip('/')} ({previous.image}) and keeping it as {release.previous}")
    docker("stop", "--time", str(STOP_SECONDS), previous.id, timeout=STOP_SECONDS + 60)
    if current is not None:
        try:
            docker("rename", previous.id, release.previous)
        except TargetError as exc:
            with contextlib.suppress(TargetError):
                docker("start", previous.id)
            raise TargetError(f"{exc}; the running container was started again, nothing else was changed") from exc
    return previous


def wait_healthy(docker: Docker, container: str, timeout: float) -> None:
    """Until docker's health check passes; Rejected when the container stops, restarts or is judged unhealthy, or
    when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        found = docker.inspect(container)
        if found is None:
            raise Rejected(f"the container {container} is gone")
        state = found["State"]
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return
        if state["Status"] != "running" or state.get("Restarting") or found.get("RestartCount"):
            raise Rejected(f"the container exited with code {state.get('ExitCode')} before it was healthy")
        if health == "unhealthy":
            probes = (state.get("Health") or {}).get("Log") or [{}]
            raise Rejected(f"docker's health check failed: {str(probes[-1].get('Output', '')).strip()[-300:]}")
        if time.monotonic() > deadline:
            raise Rejected(f"not healthy within {timeout:g} s (health check: {health or 'none'})")
        time.sleep(1)


def restore(docker: Docker, release: Release, previous: Previous | None, timeout: float, say: Say) -> str:
    """Remove the new container and put the previous one back; says what serves now."""
    try:
        if docker.inspect(release.name) is not None:
            say(f"the end of {release.name}'s log:\n{docker.logs(release.name) or '(empty)'}")
            docker("rm", "--force", release.name)
    except TargetError as exc:
        return f"the new container could not be removed ({exc}): see `docker ps --all`"
    if previous is None:
        return "nothing ran before, and nothing runs now"
    say(f"starting the previous container again ({previous.image})")
    try:
        docker("rename", previous.id, release.name)
        docker("start", previous.id)
        wait_healthy(docker, previous.id, timeout)
    except (TargetError, Rejected) as exc:
        return f"the previous container ({previous.image}) could not be put back either: {exc}"
    return f"the previous image {previous.image} serves again"


def deploy(
    release: Release,
    golden: Path,
    params: Params,
    *,
    url: str | None,
    timeout: float,
    environ: Mapping[str, str],
    say: Say,
    docker: Docker | None = None,
) -> Deployed:
    """Replace the environment's container with `release`'s (see the module's doc); TargetError if it fails.
    `environ` is the target's environment: the variables the container is handed come from it."""
    docker = docker or Docker(environ=client_environment(release, environ))
    try:
        rotate = docker("info", "--format", "{{.LoggingDriver}}") in ROTATING_DRIVERS
    except TargetError as exc:
        raise exc if exc.usage else TargetError(f"no docker engine answers here: {exc}", usage=True) from exc
    ensure_image(docker, release.image, say)
    prepare_volume(docker, release)
    previous = set_aside(docker, release, say)
    try:
        say(f"starting {release.name} on port {release.port}")
        try:
            container_id = docker(*run_arguments(release, passed_names(release, environ), rotate_logs=rotate))
        except TargetError as exc:
            raise Rejected(f"it did not start: {exc}") from exc
        wait_healthy(docker, release.name, timeout)
        say(f"{release.name} is healthy; smoke-testing {release.local_url}")
        report = smoke_test(release.local_url, release.environment, golden, params)
        if not report.passed:
            raise Rejected(f"it failed its smoke tests ({failed_checks(report)})")
    except Rejected as exc:
        outcome = restore(docker, release, previous, timeout, say)
        raise TargetError(f"{release.image} was not deployed to {release.environment}: {exc}; {outcome}") from exc
    except BaseException:  # interrupted: leave the environment as it was
        restore(docker, release, previous, timeout, say)
        raise
    if previous is not None:
        docker("rm", "--force", previous.id)
        if previous.image != release.image:  # releases are large: keep only what runs (refused while in use)
            with contextlib.suppress(TargetError):
                docker("image", "rm", previous.image)
    say(f"{release.name} serves {release.image} on port {release.port}")
    return Deployed(
        TARGET, release.environment, url or release.local_url, release.image,
        str(smoke_dir(release.environment) / "report.json"),
        detail={"container": release.name, "container id": container_id[:12], "port": release.port,
                "volume": release.volume, "inference log": release.sink or f"volume {release.volume}, log/"},
    )  # fmt: skip
