"""`forkcast target ...`: deploy one released image to a lasting target, smoke-test it there, and put the
previous one back when it fails. The scripts in deploy/targets/ and the release workflow call these."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkcast.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    PARAMS_FILE,
    ParamsOption,
    check_environment,
    fail,
    load_params,
)

if TYPE_CHECKING:
    from forkcast.targets.common import Deployed

app = typer.Typer()
target_app = typer.Typer(
    help="Deploy a released image to a lasting target (Kubernetes, a machine of your own), smoke-test it, "
    "roll back on failure.",
    no_args_is_help=True,
)
app.add_typer(target_app, name="target")

EnvOption = Annotated[str, typer.Option("--env", help="staging or production.")]
ImageOption = Annotated[str, typer.Option(help="The image as repository@sha256:<digest> (the build job's output).")]
GoldenOption = Annotated[Path, typer.Option("--golden", help="Known answers the smoke tests check.")]
UrlOption = Annotated[
    str | None,
    typer.Option("--url", help="Where users reach the service (recorded as the environment's URL); default: local."),
]
TimeoutOption = Annotated[
    int | None,
    typer.Option(min=1, help="Seconds the new release has to become ready (default: deploy.rollout_timeout_seconds)."),
]
DEFAULT_GOLDEN = Path("outputs/build/golden.json")


def report(deployed: Deployed) -> None:
    """Record the deployment (and its line in the history), summarise it, and print url=... for $GITHUB_OUTPUT."""
    import os

    from forkcast.targets import common

    common.record(deployed, os.environ.get("FORKCAST_MODEL_VERSION"))  # the release job passes it
    typer.echo(common.summary(deployed), err=True)
    typer.echo(common.step_outputs(deployed), nl=False)


@target_app.command("kubernetes")
def kubernetes(
    env: EnvOption,
    image: ImageOption,
    *,
    golden: GoldenOption = DEFAULT_GOLDEN,
    url: UrlOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the rendered manifests and change nothing (no cluster needed).")
    ] = False,
    timeout: TimeoutOption = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Render deploy/k8s/overlays/ENV with the image digest and params.yaml `deploy.ENV`, apply it with kubectl,
    wait for the rollout, smoke-test the service, and roll back to the previous revision if either fails.
    Prints url=... for $GITHUB_OUTPUT; the cluster is kubectl's (KUBECONFIG)."""
    import os

    from forkcast.serving.smoke import Golden, GoldenError
    from forkcast.targets import common
    from forkcast.targets import kubernetes as k8s

    environment = check_environment(env)
    params = load_params(params_file)
    settings = k8s.settings_from(os.environ, environment)
    try:
        common.check_url(url)
        kubectl = k8s.Kubectl.from_environment()
        secret = k8s.SETTINGS_PREFIX + "new" if settings else None  # named at deploy time (random)
        manifests = k8s.render(environment, image, params.deploy, kubectl, settings_secret=secret)
        if dry_run:
            typer.echo(manifests, nl=False)
            if settings:
                typer.echo(f"# and a new Secret {k8s.SETTINGS_PREFIX}… with {', '.join(sorted(settings))}", err=True)
            return
        Golden.read(golden)  # known answers that cannot be read: nothing is touched
        rollout = k8s.Rollout(
            environment, image, params.deploy, settings, timeout or params.deploy.rollout_timeout_seconds, url
        )
        with common.terminate_as_interrupt():  # a cancelled job (SIGTERM) still rolls back
            deployed = k8s.deploy(rollout, kubectl, lambda at: common.smoke_test(at, environment, golden, params))
    except GoldenError as exc:
        raise fail(f"{exc}: build first (`forkcast build`) or pass --golden", EXIT_USAGE) from exc
    except common.TargetError as exc:
        raise fail(str(exc), EXIT_USAGE if exc.usage else EXIT_CHECK_FAILED) from exc
    report(deployed)


@target_app.command("self-hosted")
def self_hosted(
    env: EnvOption,
    image: ImageOption,
    *,
    golden: GoldenOption = DEFAULT_GOLDEN,
    url: UrlOption = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port on 127.0.0.1 (default: serve.staging_port or production_port)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="The container's name (default: forkcast-ENV); its volume: NAME-inference.")
    ] = None,
    timeout: TimeoutOption = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Run the image on this machine under docker (restart policy, health check, persistent inference log), keeping
    the previous container until the new one passes its smoke tests. Prints url=... for $GITHUB_OUTPUT."""
    import os

    from forkcast.serving.smoke import Golden, GoldenError
    from forkcast.targets import common, self_hosted

    environment = check_environment(env)
    params = load_params(params_file)
    try:
        release = self_hosted.plan(
            environment, image,
            name=name or f"forkcast-{environment}",
            port=port or getattr(params.serve, f"{environment}_port"),
            resources=params.deploy.of(environment),
            environ=os.environ,
        )  # fmt: skip
        Golden.read(golden)  # known answers that cannot be read: nothing is touched
        deployed = self_hosted.deploy(
            release, golden, params,
            url=url, timeout=timeout or params.deploy.rollout_timeout_seconds, environ=os.environ,
            say=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
    except GoldenError as exc:
        raise fail(f"{exc}: build first (`forkcast build`) or pass --golden", EXIT_USAGE) from exc
    except common.TargetError as exc:
        raise fail(str(exc), EXIT_USAGE if exc.usage else EXIT_CHECK_FAILED) from exc
    report(deployed)
