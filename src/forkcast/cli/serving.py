"""Serving commands: build the bento, deploy it to staging and production, smoke-test it, and see what runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from forkcast import paths
from forkcast.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
    PARAMS_FILE,
    EnvironmentOption,
    ParamsOption,
    check_environment,
    fail,
    inference_log_of,
    load_params,
    require,
    step,
    tracking_errors,
)

if TYPE_CHECKING:
    from forkcast.config import Params

app = typer.Typer()


@app.command()
def build(
    alias: Annotated[
        str | None, typer.Option(help="Build the MLflow version with this alias instead of the pipeline's model.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Build a model the quality gate rejected.")] = False,
    challenger: Annotated[
        str | None,
        typer.Option(
            help="Also pack this model, scored in the shadow of every request and logged beside the answers (never "
            "answered): a registry version or alias (3, candidate) or a bento or model tag (see `forkcast compare`)."
        ),
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Import the model into the project's BentoML store (.bentoml/) and build the bento, offline."""
    from forkcast.serving import build as bento
    from forkcast.serving import versions

    params = load_params(params_file)
    bento.use_project_store()
    require(paths.prepared_split("test"))
    import pandas as pd

    try:
        with step("load the model"), tracking_errors():
            source = bento.from_mlflow_alias(params, alias) if alias else bento.from_pipeline_outputs(force=force)
            rival = versions.resolve(challenger, params).source if challenger else None
        golden = bento.golden_cases(source, pd.read_parquet(paths.prepared_split("test")), params.smoke.golden_cases)
        with step("build the bento"):
            result = bento.build(source, golden, params, challenger=rival)
    except bento.BuildError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    state = "already built, reused" if result.reused else "built"
    labels = result.labels
    typer.echo(f"{result.bento_tag} {state} (model version {labels['model_version']}, data {labels['data_hash']})")
    if result.challenger_tag:
        typer.echo(f"  challenger: {result.challenger_tag}, scored in the shadow of every request (`forkcast compare "
                   "--log ENV` reads the comparison)")  # fmt: skip
    typer.echo(f"next: forkcast deploy --env staging   (build record: {bento.BUILD_JSON})")


@app.command()
def deploy(
    env: EnvironmentOption,
    bento_tag: Annotated[
        str | None, typer.Option("--bento", help="Bento to deploy (default: the last build; production: staging's).")
    ] = None,
    approve: Annotated[
        bool, typer.Option("--approve", help="Approve a production deployment (required there).")
    ] = False,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Serve a built bento in the background for staging or production, and record what runs where."""
    import getpass

    from forkcast import atomic
    from forkcast.model import history as versions
    from forkcast.serving import build as bento
    from forkcast.serving import deploy as deployments

    environment = check_environment(env)
    params = load_params(params_file)
    bento.use_project_store()
    staging = deployments.load("staging")
    if bento_tag is None:
        if environment == "production":
            if staging is None:
                raise fail("nothing is deployed to staging: production takes staging's bento", EXIT_USAGE)
            bento_tag = staging.bento
        elif bento.BUILD_JSON.exists():
            bento_tag = str(atomic.read_json(bento.BUILD_JSON)["bento"])
        else:
            raise fail(f"no bento built yet ({bento.BUILD_JSON}): run `forkcast build` first", EXIT_USAGE)
    approved_by = getpass.getuser() if approve else None
    try:
        description = bento.describe(bento_tag)
        if environment == "production":
            deployments.check_promotion(bento_tag, staging, approved_by)
        port = params.serve.production_port if environment == "production" else params.serve.staging_port
        with step(f"deploy {bento_tag} to {environment}"):
            deployment = deployments.start(
                environment,
                bento_tag,
                description.model,
                port,
                inference_log_of(params.serve.inference_log, environment),
                approved_by=approved_by,
                challenger=description.challenger,
            )
    except bento.BuildError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except deployments.DeployError as exc:
        raise fail(str(exc), EXIT_CHECK_FAILED) from exc
    versions.append_deployment(
        versions.DeploymentEvent(
            at=versions.now(), environment=environment, target="local",
            model_version=description.labels.get("model_version"), bento=deployment.bento, url=deployment.url,
            approved_by=approved_by,
        )
    )  # fmt: skip
    typer.echo(f"{environment}: {deployment.bento} at {deployment.url} (pid {deployment.pid})")
    typer.echo(f"  inference log: {deployment.inference_log}; server log: {deployment.server_log}")
    if deployment.challenger:
        typer.echo(f"  shadow: {deployment.challenger} scores every request beside the answers (`forkcast compare "
                   f"--log {environment}`)")  # fmt: skip
    if environment == "production":
        _alias_production(description.labels["model_version"], params)
    else:
        typer.echo("next: forkcast smoke --env staging")


@app.command()
def rollback(
    to: Annotated[str, typer.Option("--to", help="The model version to go back to (see `forkcast history`).")],
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Deploy an earlier version's bento, unchanged, to staging and smoke-test it; production then takes it with the
    same approval as any release (`forkcast deploy --env production --approve`). Nothing is rebuilt."""
    from forkcast.serving import build as bento

    try:
        tag = bento.bento_of_version(to)
    except bento.BuildError as exc:
        raise fail(f"{exc}; `forkcast history` lists the versions", EXIT_USAGE) from exc
    typer.echo(f"rolling back to model version {to}: {tag}")
    deploy(env="staging", bento_tag=tag, approve=False, params_file=params_file)
    smoke(url=None, env="staging", golden_file=None, params_file=params_file)


def _alias_production(version: str, params: Params) -> None:
    """The registry's `production` alias follows what production serves, so the gate compares against it."""
    from forkcast.model.registry import GateRefusedError
    from forkcast.model.registry import promote as set_alias

    with tracking_errors():
        try:
            set_alias(paths.LOCAL_MLFLOW_DIR, params, version)
        except GateRefusedError as exc:
            raise fail(f"deployed, but the registry alias was not moved: {exc}", EXIT_CHECK_FAILED) from exc
    typer.echo(f"  registry: {params.tracking.registered_model} v{version} is now aliased 'production'")


@app.command()
def undeploy(env: Annotated[str, typer.Option("--env", help="staging, production or all.")] = "all") -> None:
    """Stop a local deployment (its inference log is flushed first)."""
    from forkcast.serving import deploy as deployments

    names = deployments.ENVIRONMENTS if env == "all" else (check_environment(env),)
    for name in names:
        strays = [process.pid for process in deployments.processes_of(name)]
        try:
            stopped = deployments.stop(name)
        except deployments.DeployError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
        if stopped:
            typer.echo(f"{name}: stopped {stopped.bento} (pid {stopped.pid}; processes {strays or 'none left'})")
        elif strays:
            typer.echo(f"{name}: nothing recorded, but ended the processes that served it: {strays}")
        else:
            typer.echo(f"{name}: nothing deployed")


@app.command()
def status() -> None:
    """What runs where: bento, URL, pid, health and smoke result per environment; exit 1 when a deployed one is
    down (so scripts and probes can act on it)."""
    from forkcast.serving import deploy as deployments

    down = []
    for name in deployments.ENVIRONMENTS:
        health = deployments.health(name)
        current = health.recorded
        if not health.ok:
            down.append(name)
        if current is None:
            typer.echo(f"{name:<10} {health.state}  {health.detail}".rstrip())
            continue
        typer.echo(
            f"{name:<10} {current.bento}  {current.url}  pid {current.pid}  {health.state}  smoke {current.smoke_state}"
        )
        if health.detail:
            typer.echo(f"{'':<10} {health.detail}")
    if down:
        again = " ".join(f"`forkcast deploy --env {name}`" for name in down)
        message = f"{', '.join(down)} deployed but down: start again with {again}, or `forkcast undeploy`"
        raise fail(message, EXIT_CHECK_FAILED)


@app.command()
def smoke(
    url: Annotated[str | None, typer.Option(help="Service URL to test (or use --env).")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Test the local staging or production deployment.")] = None,
    golden_file: Annotated[
        Path | None, typer.Option("--golden", help="Known answers (default: the last build's).")
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Smoke-test a running service; write a Markdown + JSON report; exit 1 on any failure."""
    from forkcast.serving import build as bento
    from forkcast.serving import deploy as deployments
    from forkcast.serving import smoke as checks

    params = load_params(params_file)
    if (url is None) == (env is None):
        raise fail("give exactly one of --url and --env", EXIT_USAGE)
    environment = check_environment(env) if env else None
    target, deployed = url or "", None
    if environment:
        deployed = deployments.load(environment)
        if deployed is None:
            raise fail(f"nothing is deployed to {environment}: run `forkcast deploy --env {environment}`", EXIT_USAGE)
        target = deployed.url
    try:
        if golden_file is None and deployed:  # the known answers inside the deployed bento
            bento.use_project_store()
            golden = checks.Golden.from_dict(bento.golden_of(deployed.bento, params.smoke.tolerance))
        else:
            golden = checks.Golden.read(golden_file or bento.GOLDEN_JSON)
    except (checks.GoldenError, bento.BuildError) as exc:
        raise fail(f"{exc}; build first (`forkcast build`) or pass --golden", EXIT_USAGE) from exc
    suite = checks.SmokeSuite(golden, params.smoke.latency_requests, params.smoke.p95_budget_ms)
    with step(f"smoke-test {target}"):
        report = checks.run(target, suite)
    directory = paths.OUTPUTS / "smoke" / (environment or "adhoc")
    json_path = checks.save(report, directory)
    for result in report.checks:
        typer.echo(f"  {'pass' if result.passed else 'FAIL'}  {result.name}: {result.detail}")
    if environment:
        try:
            deployments.record_smoke(environment, report.passed, json_path, tested=deployed)
        except deployments.DeployError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
    typer.echo(f"report: {directory / 'report.md'}")
    if not report.passed:
        raise fail(f"smoke tests failed against {target}", EXIT_CHECK_FAILED)
    if environment == "staging":
        typer.echo("next: forkcast deploy --env production --approve")
