"""The `forkcast` command: one subcommand per pipeline stage, thin over the stage modules.

Heavy libraries are imported inside each command so that `forkcast --help` is instant.
Exit codes: 0 success, 1 the data or model failed a check (see the report), 2 bad usage or config.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkcast import paths

if TYPE_CHECKING:
    from forkcast.config import Params

# config is imported only inside commands: building its pydantic models costs half a second `--help` need not pay.
PARAMS_FILE = paths.PARAMS_FILE

app = typer.Typer(
    help="Forkcast: validate, prepare, train, evaluate and register a demand model. "
    "Run the whole pipeline with `dvc repro` (or `make run`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: rendering it with rich costs half a second
)

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

ParamsOption = Annotated[Path, typer.Option("--params", help="The params file.")]


def _fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _params(path: Path) -> Params:
    from forkcast.config import ConfigError, load_params

    try:
        return load_params(path)
    except ConfigError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc


@contextmanager
def _step(name: str) -> Iterator[None]:
    """Print what a step does and how long it took, so long steps are never silent."""
    typer.echo(f"{name} ...", err=True)
    started = time.perf_counter()
    yield
    typer.echo(f"{name}: done in {time.perf_counter() - started:.1f}s", err=True)


def _require(*files: Path) -> None:
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise _fail(f"missing input {', '.join(missing)}: run the earlier stages first (`dvc repro`)", EXIT_USAGE)


@app.command()
def validate(
    data: Annotated[Path | None, typer.Option(help="CSV to check (default: data.raw in params.yaml).")] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Check the raw data against the schema; write a JSON and Markdown report; exit 1 below the threshold."""
    from forkcast.config import ConfigError
    from forkcast.validation import validate_file, write_report

    params = _params(params_file)
    source = data or params.data.raw
    with _step(f"validate {source}"):
        try:
            report = validate_file(source, params.validate_, params.data.start_date)
        except ConfigError as exc:
            raise _fail(str(exc), EXIT_USAGE) from exc
        write_report(report, paths.VALIDATION_JSON, paths.VALIDATION_MD)
    typer.echo(
        f"{report.checks_passed}/{len(report.checks)} checks passed ({report.share_of_checks_passed:.1%}, "
        f"required {report.min_share_of_checks_passed:.1%}); {report.rows_passing_all_checks:,} of "
        f"{report.rows:,} rows pass every check. Report: {paths.VALIDATION_MD}"
    )
    if not report.passed:
        for check in report.failed_checks:
            detail = check.error or f"pass rate {check.pass_rate:.2%} < {check.min_pass_rate:.2%}"
            typer.echo(f"  FAILED {check.name}: {detail}", err=True)
        raise _fail(f"data validation failed: see {paths.VALIDATION_MD}", EXIT_CHECK_FAILED)


@app.command()
def prepare(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Build model features and split them by time into train, validation and test."""
    import pandera.pandas as pa

    from forkcast.prepare import build_features, drop_failing_rows, read_table, split_by_time, write_splits

    params = _params(params_file)
    _require(params.data.raw)
    with _step("prepare"):
        try:
            raw, dropped = drop_failing_rows(read_table(params.data.raw))
            splits = split_by_time(build_features(raw, params.data), params.split)
        except (ValueError, KeyError, pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
            raise _fail(f"cannot prepare {params.data.raw}: {exc}", EXIT_CHECK_FAILED) from exc
        write_splits(splits, {name: paths.prepared_split(name) for name in paths.SPLITS})
    if dropped:
        typer.echo(f"dropped {dropped:,} rows that fail a check the validation tolerated (see its report)")
    for name, frame in splits.items():
        start, end = frame["timestamp"].min(), frame["timestamp"].max()
        typer.echo(f"{name:>10}: {len(frame):>6,} rows  {start:%Y-%m-%d} .. {end:%Y-%m-%d}")


def _read_splits() -> dict[str, Any]:
    from forkcast.prepare import read_split

    files = {name: paths.prepared_split(name) for name in paths.SPLITS}
    _require(*files.values())
    return {name: read_split(path) for name, path in files.items()}


@app.command()
def train(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Fit the model pipeline; export and check ONNX; write metadata."""
    from forkcast import lineage
    from forkcast.train import OnnxMismatchError, save
    from forkcast.train import train as fit_model

    params = _params(params_file)
    splits = _read_splits()
    with _step(f"train {params.train.model}"):
        try:
            model = fit_model(params, splits, lineage.data_hash(paths.DATA_DVC))
        except OnnxMismatchError as exc:
            raise _fail(str(exc), EXIT_CHECK_FAILED) from exc
        save(model, paths.MODEL_PICKLE, paths.MODEL_ONNX, paths.MODEL_METADATA)
    validation = model.metadata["metrics"]["validation"]
    typer.echo(
        f"validation RMSE {validation['rmse']:.1f}, MAE {validation['mae']:.1f}, R² {validation['r2']:.3f}; "
        f"ONNX matches within {model.metadata['onnx_max_abs_difference_on_test']:.2g}"
    )


@app.command()
def evaluate(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Score the model and the naive seasonal baseline on the test split; write metrics and plot data."""
    from forkcast.evaluate import evaluate as score
    from forkcast.evaluate import save
    from forkcast.train import load_pipeline

    params = _params(params_file)
    _require(paths.MODEL_PICKLE)
    splits = _read_splits()
    with _step("evaluate"):
        evaluation = score(load_pipeline(paths.MODEL_PICKLE), splits["train"], splits["test"], params.data.target)
        save(evaluation, paths.METRICS_JSON, paths.PREDICTIONS_CSV, paths.ERROR_BY_HOUR_CSV, paths.ERROR_BY_MONTH_CSV)
    typer.echo(_metrics_table(evaluation.metrics))


def _metrics_table(metrics: dict[str, Any]) -> str:
    from forkcast.report import versus_baseline

    model, baseline = metrics["model"], metrics["baseline"]
    lines = [f"{'test set':<22}{'RMSE':>8}{'MAE':>8}{'R²':>8}"]
    for label, values in (("model", model), ("seasonal baseline", baseline)):
        lines.append(f"{label:<22}{values['rmse']:>8.1f}{values['mae']:>8.1f}{values['r2']:>8.3f}")
    lines.append(f"RMSE {versus_baseline(metrics['rmse_improvement_over_baseline'])}")
    return "\n".join(lines)


@contextmanager
def _tracking_errors() -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    from forkcast.registry import TrackingUnavailableError

    try:
        yield
    except TrackingUnavailableError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    except MlflowException as exc:
        usage = exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
        code = EXIT_USAGE if usage else EXIT_CHECK_FAILED
        raise _fail(f"MLflow refused the request: {exc.message}", code) from exc


@app.command()
def register(params_file: ParamsOption = PARAMS_FILE) -> None:
    """Log the run to MLflow, register a model version as `candidate`, and judge it against `production`."""
    from forkcast import atomic, lineage
    from forkcast.registry import save_gate, track_and_register
    from forkcast.train import load_pipeline

    params = _params(params_file)
    reports = [paths.VALIDATION_JSON, paths.VALIDATION_MD, paths.MODEL_METADATA, paths.METRICS_JSON, paths.MODEL_ONNX]
    _require(paths.MODEL_PICKLE, *reports)
    if not atomic.read_json(paths.VALIDATION_JSON)["passed"]:
        raise _fail(f"the data failed validation ({paths.VALIDATION_MD}): nothing is registered", EXIT_CHECK_FAILED)
    test = _read_splits()["test"]
    with _step("register in MLflow"), _tracking_errors():
        registration = track_and_register(
            params=params,
            pipeline=load_pipeline(paths.MODEL_PICKLE),
            test=test,
            evaluation=atomic.read_json(paths.METRICS_JSON),
            metadata=atomic.read_json(paths.MODEL_METADATA),
            lineage=lineage.lineage(paths.DATA_DVC, paths.DVC_LOCK),
            artifacts=reports,
            local_dir=paths.LOCAL_MLFLOW_DIR,
        )  # fmt: skip
        trained_at = atomic.read_json(paths.MODEL_METADATA).get("trained_at")
        save_gate(registration, paths.GATE_JSON, paths.GATE_MD, model_trained_at=trained_at)
    verdict = registration.verdict
    typer.echo(
        f"registered {registration.model_name} v{registration.version} (alias candidate); gate: "
        f"{'ELIGIBLE' if verdict.eligible else 'REJECTED'}: {verdict.reason}"
    )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="The registered model version to promote.")],
    force: Annotated[bool, typer.Option("--force", help="Promote even a version the gate rejected.")] = False,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Give a registered model version the `production` alias (later candidates are judged against it)."""
    from forkcast.registry import GateRefusedError
    from forkcast.registry import promote as set_alias

    params = _params(params_file)
    with _tracking_errors():
        try:
            set_alias(paths.LOCAL_MLFLOW_DIR, params, version, force=force)
        except GateRefusedError as exc:
            raise _fail(str(exc), EXIT_CHECK_FAILED) from exc
    typer.echo(f"{params.tracking.registered_model} v{version} is now aliased 'production'")


@app.command()
def summary() -> None:
    """Print the outcome of the last pipeline run: metrics vs baseline, validation, gate, MLflow run."""
    from forkcast.report import pipeline_summary

    _require(paths.VALIDATION_JSON)
    typer.echo(pipeline_summary())


@app.command("new-data")
def new_data(
    through: Annotated[
        str | None, typer.Option(help="Keep the feed up to the end of this month (YYYY-MM), e.g. 2011-02.")
    ] = None,
    next_month: Annotated[bool, typer.Option("--next-month", help="Append the month after the latest one.")] = False,
    feed: Annotated[Path, typer.Option(help="The full upstream feed to take months from.")] = Path(
        "feed/bikeshare_2011_hourly.csv"
    ),
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Simulate new data arriving: rewrite the training data from the feed, month by month."""
    from forkcast.arrivals import ArrivalError, arrive

    params = _params(params_file)
    if (through is None) == (not next_month):
        raise _fail("give exactly one of --through YYYY-MM or --next-month", EXIT_USAGE)
    try:
        message = arrive(feed, params.data.raw, params.data.start_date, through)
    except ArrivalError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    typer.echo(message)
    typer.echo(
        "next: `dvc add data && dvc push data.dvc`, commit data.dvc (and .dvc/storage with the default remote), "
        "then `make run`"
    )


EnvironmentOption = Annotated[str, typer.Option("--env", help="staging or production.")]


def _environment(name: str) -> Any:
    from forkcast.deploy import ENVIRONMENTS

    if name not in ENVIRONMENTS:
        raise _fail(f"--env must be one of {', '.join(ENVIRONMENTS)}, not '{name}'", EXIT_USAGE)
    return name


@app.command()
def build(
    alias: Annotated[
        str | None, typer.Option(help="Build the MLflow version with this alias instead of the pipeline's model.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Build a model the quality gate rejected.")] = False,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Import the model into the project's BentoML store (.bentoml/) and build the bento, offline."""
    from forkcast import build as bento

    params = _params(params_file)
    bento.use_project_store()
    _require(paths.prepared_split("test"))
    import pandas as pd

    try:
        with _step("load the model"), _tracking_errors():
            source = bento.from_mlflow_alias(params, alias) if alias else bento.from_pipeline_outputs(force=force)
        golden = bento.golden_cases(
            source.pipeline, pd.read_parquet(paths.prepared_split("test")), params.smoke.golden_cases
        )
        with _step("build the bento"):
            result = bento.build(source, golden, params)
    except bento.BuildError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    state = "already built, reused" if result.reused else "built"
    labels = result.labels
    typer.echo(f"{result.bento_tag} {state} (model version {labels['model_version']}, data {labels['data_hash']})")
    typer.echo(f"next: forkcast deploy --env staging   (build record: {bento.BUILD_JSON})")


def _inference_log(root: str, environment: str) -> str:
    import os

    root = os.environ.get("FORKCAST_INFERENCE_LOG") or root  # set but empty (an unset CI variable): the default
    return f"{root.rstrip('/')}/{environment}" if "://" in root else str((Path(root) / environment).resolve())


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
    from forkcast import build as bento
    from forkcast import deploy as deployments

    environment = _environment(env)
    params = _params(params_file)
    bento.use_project_store()
    staging = deployments.load("staging")
    if bento_tag is None:
        if environment == "production":
            if staging is None:
                raise _fail("nothing is deployed to staging: production takes staging's bento", EXIT_USAGE)
            bento_tag = staging.bento
        elif bento.BUILD_JSON.exists():
            bento_tag = str(atomic.read_json(bento.BUILD_JSON)["bento"])
        else:
            raise _fail(f"no bento built yet ({bento.BUILD_JSON}): run `forkcast build` first", EXIT_USAGE)
    approved_by = getpass.getuser() if approve else None
    try:
        description = bento.describe(bento_tag)
        if environment == "production":
            deployments.check_promotion(bento_tag, staging, approved_by)
        port = params.serve.production_port if environment == "production" else params.serve.staging_port
        with _step(f"deploy {bento_tag} to {environment}"):
            deployment = deployments.start(
                environment,
                bento_tag,
                description.model,
                port,
                _inference_log(params.serve.inference_log, environment),
                approved_by=approved_by,
            )
    except bento.BuildError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    except deployments.DeployError as exc:
        raise _fail(str(exc), EXIT_CHECK_FAILED) from exc
    typer.echo(f"{environment}: {deployment.bento} at {deployment.url} (pid {deployment.pid})")
    typer.echo(f"  inference log: {deployment.inference_log}; server log: {deployment.server_log}")
    if environment == "production":
        _alias_production(description.labels["model_version"], params)
    else:
        typer.echo("next: forkcast smoke --env staging")


def _alias_production(version: str, params: Params) -> None:
    """The registry's `production` alias follows what production serves, so the gate compares against it."""
    from forkcast.registry import GateRefusedError
    from forkcast.registry import promote as set_alias

    with _tracking_errors():
        try:
            set_alias(paths.LOCAL_MLFLOW_DIR, params, version)
        except GateRefusedError as exc:
            raise _fail(f"deployed, but the registry alias was not moved: {exc}", EXIT_CHECK_FAILED) from exc
    typer.echo(f"  registry: {params.tracking.registered_model} v{version} is now aliased 'production'")


@app.command()
def undeploy(env: Annotated[str, typer.Option("--env", help="staging, production or all.")] = "all") -> None:
    """Stop a local deployment (its inference log is flushed first)."""
    from forkcast import deploy as deployments

    names = deployments.ENVIRONMENTS if env == "all" else (_environment(env),)
    for name in names:
        stopped = deployments.stop(name)
        typer.echo(f"{name}: stopped {stopped.bento} (pid {stopped.pid})" if stopped else f"{name}: nothing deployed")


@app.command()
def status() -> None:
    """What runs where: bento, URL, pid, health and smoke result per environment."""
    from forkcast import deploy as deployments

    for name in deployments.ENVIRONMENTS:
        current = deployments.load(name)
        if current is None:
            typer.echo(f"{name:<10} not deployed")
            continue
        health = "ready" if deployments.is_alive(current) and deployments.is_ready(current.url) else "DOWN"
        typer.echo(
            f"{name:<10} {current.bento}  {current.url}  pid {current.pid}  {health}  smoke {current.smoke_state}"
        )


@app.command("job-summary")
def job_summary(
    outputs: Annotated[
        bool, typer.Option("--outputs", help="Print `eligible=true|false` for $GITHUB_OUTPUT instead.")
    ] = False,
) -> None:
    """Print the pipeline's Markdown summary (validation, metrics, gate) for $GITHUB_STEP_SUMMARY."""
    from forkcast import ci_report

    if outputs:
        gate = ci_report.gate_outputs()
        if gate is None:
            raise _fail(f"no gate verdict ({paths.GATE_JSON}): the pipeline stopped before the register stage", 1)
        typer.echo(gate, nl=False)
    else:
        typer.echo(ci_report.job_summary())


@app.command("pr-report")
def pr_report(
    base: Annotated[str, typer.Option(help="Git revision to compare with, e.g. origin/main.")] = "origin/main",
) -> None:
    """Print the pull-request comment: params and metrics diff against BASE, validation, gate."""
    from forkcast import ci_report

    params_diff, metrics_diff = ci_report.dvc_diff("params", base), ci_report.dvc_diff("metrics", base)
    typer.echo(ci_report.pull_request_comment(base, params_diff, metrics_diff))


release_app = typer.Typer(
    help="The release line's records: the image build plan and the release manifest.", no_args_is_help=True
)
app.add_typer(release_app, name="release")


@release_app.command("image-plan")
def release_image_plan(
    image: Annotated[str, typer.Option(help="Image repository, e.g. ghcr.io/owner/name.")],
    source: Annotated[str, typer.Option(help="Repository URL for the OCI source label.")] = "",
    revision: Annotated[str, typer.Option(help="Git commit for the OCI revision label.")] = "",
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write the `docker buildx build` arguments (outputs/release/image.args)."),
    ] = None,
) -> None:
    """Write the arguments that build the last bento's image (one per line), with lineage labels."""
    from forkcast import build as bento
    from forkcast import release

    bento.use_project_store()
    from bentoml.exceptions import BentoMLException

    try:
        record = release.read_build_record(bento.BUILD_JSON)
        try:
            with _step("assemble the image's build context (bento, models, Dockerfile)"):
                context = release.image_context(record["bento"])
        except BentoMLException as exc:
            raise release.ReleaseError(f"{record['bento']} is not in the store: run `forkcast build`") from exc
        plan = release.plan_image(record, context, image, source=source, revision=revision)
    except release.ReleaseError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    from forkcast import atomic

    args_file = output or release.IMAGE_ARGS
    atomic.write_text(args_file, "\n".join(plan.buildx_args()) + "\n")
    typer.echo(f"image {', '.join(plan.tags)} from {plan.context}; arguments in {args_file}")


@release_app.command("manifest")
def release_manifest(
    image: Annotated[str, typer.Option(help="Image repository the digest belongs to ('' for a bento only).")] = "",
    digest: Annotated[str, typer.Option(help="The pushed image's digest, sha256:...")] = "",
    commit: Annotated[str, typer.Option(help="Git commit being released.")] = "",
    run_url: Annotated[str, typer.Option(help="URL of the workflow run.")] = "",
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Write outputs/release/manifest.{json,md}: model, data hash, params, commit, metrics, digest."""
    from forkcast import build as bento
    from forkcast import lineage, release

    try:
        record = release.read_build_record(bento.BUILD_JSON)
        manifest = release.manifest(
            record,
            params_file,
            image=image or None,
            digest=digest or None,
            commit=commit or lineage.git_commit() or "unknown",
            run_url=run_url or None,
        )
    except release.ReleaseError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    path = release.write_manifest(manifest)
    typer.echo(f"release {manifest['release']}: {manifest['image'] or manifest['bento']}  -> {path}")


@release_app.command("outputs")
def release_outputs(
    manifest_file: Annotated[
        Path | None, typer.Option("--manifest", help="Read a release manifest instead of the last build.")
    ] = None,
    pushed: Annotated[
        Path | None, typer.Option(help="Read the pushed image's digest from this `docker buildx --metadata-file`.")
    ] = None,
    image: Annotated[str, typer.Option(help="The image repository (with --pushed).")] = "",
) -> None:
    """Print `key=value` lines (release, bento, model, image, digest) for $GITHUB_OUTPUT."""
    from forkcast import build as bento
    from forkcast import release

    try:
        if pushed:
            values = release.pushed_image(pushed, image)
        elif manifest_file:
            values = release.manifest_outputs(release.read_manifest(manifest_file))
        else:
            values = release.build_outputs(release.read_build_record(bento.BUILD_JSON))
        typer.echo(release.step_outputs(values), nl=False)
    except release.ReleaseError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc


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
    from forkcast import build as bento
    from forkcast import deploy as deployments
    from forkcast import smoke as checks

    params = _params(params_file)
    if (url is None) == (env is None):
        raise _fail("give exactly one of --url and --env", EXIT_USAGE)
    environment = _environment(env) if env else None
    target, deployed = url or "", None
    if environment:
        deployed = deployments.load(environment)
        if deployed is None:
            raise _fail(f"nothing is deployed to {environment}: run `forkcast deploy --env {environment}`", EXIT_USAGE)
        target = deployed.url
    try:
        if golden_file is None and deployed:  # the known answers inside the deployed bento
            bento.use_project_store()
            golden = checks.Golden.from_dict(bento.golden_of(deployed.bento, params.smoke.tolerance))
        else:
            golden = checks.Golden.read(golden_file or bento.GOLDEN_JSON)
    except (checks.GoldenError, bento.BuildError) as exc:
        raise _fail(f"{exc}; build first (`forkcast build`) or pass --golden", EXIT_USAGE) from exc
    suite = checks.SmokeSuite(golden, params.smoke.latency_requests, params.smoke.p95_budget_ms)
    with _step(f"smoke-test {target}"):
        report = checks.run(target, suite)
    directory = paths.OUTPUTS / "smoke" / (environment or "adhoc")
    json_path = checks.save(report, directory)
    for result in report.checks:
        typer.echo(f"  {'pass' if result.passed else 'FAIL'}  {result.name}: {result.detail}")
    if environment:
        deployments.record_smoke(environment, report.passed, json_path)
    typer.echo(f"report: {directory / 'report.md'}")
    if not report.passed:
        raise _fail(f"smoke tests failed against {target}", EXIT_CHECK_FAILED)
    if environment == "staging":
        typer.echo("next: forkcast deploy --env production --approve")


@app.command()
def drift(
    *,
    env: Annotated[str, typer.Option("--env", help="Whose traffic to check: staging or production.")] = "production",
    sink: Annotated[
        str | None,
        typer.Option(
            help="Its inference log, a directory or s3://bucket/prefix (default: where `forkcast deploy` logs: "
            "serve.inference_log/ENV, or $FORKCAST_INFERENCE_LOG/ENV)."
        ),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help="Training data to compare with (default: outputs/prepared/train.parquet).")
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Known outcomes, Parquet or CSV with columns request_id, position, actual "
            "(default: outputs/labels/ENV.parquet when it exists)."
        ),
    ] = None,
    window_days: Annotated[
        int | None, typer.Option("--window-days", min=1, help="Days of log to read (default: monitor.window_days).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End of the window, ISO date or time, UTC unless given (default: now).")
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Compare recent traffic with the model's training data (Evidently); write outputs/drift/ENV/.

    Input drift per feature, prediction drift, data quality, and the error on labelled records. Writes
    report.html, drift.json and summary.md (replacing the previous report only once all are written).

    \b
    Exit codes:
      0  no drift
      1  drift: input drift share, prediction drift, or labelled RMSE above the allowed bound
      2  usage or configuration error (e.g. no reference data: run `dvc repro`)
      3  no production data yet: no log, or only smoke-test and probe traffic in the window
      4  the drift job itself failed (the error is printed; the previous report is kept)

    \b
    Labels file (Parquet or CSV), one row per predicted record, as `forkcast replay` writes it:
      request_id  the request's id, as logged (the x-request-id header)
      position    the record's index in that request, from 0
      actual      the true count (rows without one are ignored)
    """
    from forkcast import deploy as deployments
    from forkcast import drift as monitoring

    environment = _environment(env)
    params = _params(params_file)
    deployed = deployments.load(environment)
    # Where the running service logs, as its deployment recorded it; else where a deployment would log.
    log = sink or (deployed.inference_log if deployed else _inference_log(params.serve.inference_log, environment))
    directory = monitoring.output_dir(environment)
    try:
        window = monitoring.Window.ending(monitoring.parse_until(until), window_days or params.monitor.window_days)
        context = monitoring.Context(environment, log, window, params.monitor)
        label_file = labels or monitoring.default_labels(environment)
        known = monitoring.read_labels(label_file) if label_file else None
        with _step(f"read {environment}'s inference log {log}"):
            traffic = monitoring.read_traffic(log, window)
        if traffic.rows == 0:
            outcome = monitoring.no_data_result(context, traffic)
            monitoring.write_outputs(directory, outcome, None)
            typer.echo(f"no production data yet: {outcome['reasons'][0]}.")
            typer.echo(f"next: {outcome['next']}. (Report: {directory / 'summary.md'})")
            raise typer.Exit(monitoring.EXIT_NO_DATA)
        with _step("load the reference and the model's predictions on it"):
            model = monitoring.production_model(environment)
            baseline = monitoring.load_reference(reference or paths.prepared_split("train"), model)
        with _step(f"compare {traffic.rows:,} records with {len(baseline.frame):,} reference rows (Evidently)"):
            outcome, snapshot = monitoring.analyse(context, traffic, baseline, known)
        monitoring.write_outputs(directory, outcome, snapshot)
    except monitoring.DriftError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    except (typer.Exit, KeyboardInterrupt):
        raise
    except Exception as exc:  # never exit 1 for a crash: 1 means drift, and the nightly job acts on it
        raise _fail(f"the drift job failed: {type(exc).__name__}: {exc}", monitoring.EXIT_FAILED) from exc
    for warning in outcome["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    sampled = f" (a sample of {outcome['rows']['compared']:,})" if outcome["rows"]["sampled"] else ""
    typer.echo(f"{environment}: {outcome['rows']['in_window']:,} records{sampled} vs {baseline.identity['path']}")
    typer.echo(f"report: {directory / 'summary.md'} and {directory / 'report.html'}")
    if outcome["verdict"] == monitoring.DRIFT:
        typer.echo("DRIFT: " + "; ".join(outcome["reasons"]))
        typer.echo("next: read the report; retrain on recent data (add it, then `make run`) or roll back")
        raise typer.Exit(monitoring.EXIT_DRIFT)
    typer.echo("no drift")


RepoOption = Annotated[
    str | None, typer.Option("--repo", help="OWNER/NAME (default: $GITHUB_REPOSITORY, or the github.com `origin`).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print each write (endpoint and JSON payload) instead of sending it.")
]


def _repo(value: str | None) -> str:
    from forkcast.github import default_repo, parse_repo

    text = value or default_repo()
    if not text:
        raise _fail("give --repo OWNER/NAME: no $GITHUB_REPOSITORY and no github.com `origin` remote", EXIT_USAGE)
    try:
        return parse_repo(text)
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc


@contextmanager
def _github_errors() -> Iterator[None]:
    """No token, or a request GitHub refuses (4xx), is a usage error; GitHub failing or out of reach is 1."""
    from forkcast.github import GitHubError, TokenMissingError

    try:
        yield
    except TokenMissingError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    except GitHubError as exc:
        refused = exc.status is not None and 400 <= exc.status < 500 and exc.status != 429
        raise _fail(str(exc), EXIT_USAGE if refused else EXIT_CHECK_FAILED) from exc


def _service(url: str | None, env: str | None) -> tuple[str, str | None]:
    """The URL of the service to talk to, and its environment (None for a bare --url)."""
    from forkcast import deploy as deployments

    if (url is None) == (env is None):
        raise _fail("give exactly one of --url and --env", EXIT_USAGE)
    if url is not None:
        if not url.startswith(("http://", "https://")):
            raise _fail(f"--url must start with http:// or https://, not '{url}'", EXIT_USAGE)
        return url.rstrip("/"), None
    environment = _environment(str(env))
    deployed = deployments.load(environment)
    if deployed is None:
        raise _fail(f"nothing is deployed to {environment}: run `forkcast deploy --env {environment}`", EXIT_USAGE)
    return deployed.url, environment


@app.command()
def replay(
    *,
    url: Annotated[str | None, typer.Option(help="Service URL to send the hours to (or use --env).")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Send them to the local staging or production.")] = None,
    start: Annotated[
        str, typer.Option("--from", help="First date to replay (YYYY-MM-DD; default: December, after training).")
    ] = "2011-12-01",
    end: Annotated[str, typer.Option("--to", help="Last date to replay, included.")] = "2011-12-31",
    batch: Annotated[int, typer.Option(help="Records per request.")] = 24,
    labels: Annotated[
        Path | None, typer.Option(help="Labels file to append to (default: outputs/labels/<env or adhoc>.parquet).")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Raw hourly CSV (default: data.raw in params.yaml).")] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Send real hours through a running service (request ids replay-...) and append their true counts as labels."""
    import datetime as dt

    import pandera.pandas as pa

    from forkcast import deploy as deployments
    from forkcast import replay as replaying
    from forkcast.prepare import build_features, load_raw

    params = _params(params_file)
    target, environment = _service(url, env)
    labels_file = labels or replaying.labels_path(environment)
    if labels_file.suffix != ".parquet":
        raise _fail(f"--labels must be a .parquet file (the replay writes Parquet), not {labels_file}", EXIT_USAGE)
    source = data or params.data.raw
    _require(source)
    try:
        first, last = replaying.parse_date(start, "--from"), replaying.parse_date(end, "--to")
        replaying.check_batch(batch)
        replaying.read_labels(labels_file)  # an unreadable labels file fails now, before anything is sent
        try:
            prepared = build_features(load_raw(source), params.data)
        except (ValueError, KeyError, pa.errors.SchemaError, pa.errors.SchemaErrors) as exc:
            raise replaying.ReplayInputError(f"cannot read the hours in {source}: {exc}") from exc
        hours = replaying.select_hours(prepared, first, last)
    except replaying.ReplayInputError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc

    def progress(rows: int, requests: int, seconds: float) -> None:
        rate = rows / seconds if seconds > 0 else 0.0
        typer.echo(f"  {rows:,}/{len(hours):,} hours sent in {requests:,} requests, {rate:,.0f} rows/s", err=True)

    typer.echo(f"replaying {len(hours):,} hours ({first}..{last}) to {target} in batches of {batch}", err=True)
    started = dt.datetime.now(dt.UTC)
    result = replaying.replay(
        target, replaying.to_records(hours), hours[params.data.target].astype(float).tolist(), batch, progress=progress
    )
    total = replaying.append_labels(labels_file, result.labels) if result.rows else None
    kept = f"their labels were added to {labels_file}" if total else "no labels were written"
    stopped = result.stopped
    if stopped and stopped.reason == "unreachable" and not result.rows:
        where = f"--env {environment}`" if environment else "--env staging`, or start the service there"
        raise _fail(
            f"nothing is deployed at {target}: run `forkcast deploy {where} ({stopped.detail})", EXIT_CHECK_FAILED
        )
    if stopped:
        raise _fail(
            f"{stopped.detail}\n{result.rows:,} of {result.planned:,} hours were answered before it stopped; "
            f"{kept}. The rest were not sent.",
            EXIT_CHECK_FAILED,
        )
    rate = result.rows / result.seconds if result.seconds > 0 else 0.0
    typer.echo(
        f"replayed {result.rows:,} hours in {result.requests:,} requests in {result.seconds:.1f}s "
        f"({rate:,.0f} rows/s) to {target}; labels: {labels_file} ({total:,} rows in all)"
    )
    deployed = deployments.load(_environment(environment)) if environment else None
    if deployed is not None:  # the service writes its log every few seconds: a drift report now must see it all
        with _step(f"wait for {environment} to write them to its inference log"):
            logged = replaying.wait_until_logged(
                deployed.inference_log, set(result.answers["request_id"]), started - dt.timedelta(minutes=1)
            )
        if not logged:
            raise _fail(f"{environment} has not logged every replayed hour in {deployed.inference_log}", 1)


@app.command()
def probe(
    url: Annotated[str | None, typer.Option(help="Service URL to probe (or use --env).")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Probe the local staging or production deployment.")] = None,
    budget_ms: Annotated[
        float | None,
        typer.Option("--budget-ms", help="Latency budget of the one prediction (default: monitor.probe_budget_ms)."),
    ] = None,
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Check a running service: /readyz, /livez, one timed prediction, /metrics; write outputs/probe/<env>.json."""
    from forkcast import probe as probing

    budget = _params(params_file).monitor.probe_budget_ms if budget_ms is None else budget_ms
    target, environment = _service(url, env)
    if not budget > 0:
        raise _fail(f"--budget-ms must be positive, not {budget:g}", EXIT_USAGE)
    report = probing.probe(target, budget, environment=environment)
    path = probing.save(report, probing.record_path(environment))
    typer.echo(probing.render_table(report))
    typer.echo(f"record: {path}")
    if not report.reachable:
        what = environment or "the service"
        hint = f"`forkcast status`, then `forkcast deploy --env {environment}`" if environment else "is it running?"
        raise _fail(f"{what} does not answer at {target}: {hint}", EXIT_CHECK_FAILED)
    if not report.passed:
        raise _fail(f"probe of {target} failed: {', '.join(report.failed)}", EXIT_CHECK_FAILED)


@app.command()
def comment(
    *,
    pr: Annotated[int, typer.Option("--pr", min=1, help="Pull request (or issue) number.")],
    marker: Annotated[str, typer.Option(help="Hidden marker that finds the comment again, e.g. forkcast-pipeline.")],
    body_file: Annotated[Path, typer.Option("--body-file", help="The Markdown body ('-' reads standard input).")],
    author: Annotated[
        str | None, typer.Option(help="Only update a comment by this account (e.g. github-actions[bot]).")
    ] = None,
    repo: RepoOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Post one comment on a pull request, and update that same comment in place on later runs."""
    from forkcast import github

    target = _repo(repo)
    if str(body_file) == "-":
        body = sys.stdin.read()
    elif body_file.is_file():
        body = body_file.read_text()
    else:
        raise _fail(f"no body file {body_file}", EXIT_USAGE)
    if not body.strip():
        raise _fail(f"the body in {body_file} is empty: nothing to post", EXIT_USAGE)
    try:
        tag = github.hidden_marker(marker)
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    with _github_errors(), github.client(dry_run=dry_run, echo=typer.echo) as gh:
        result = gh.upsert_comment(target, pr, marker, body, author=author)
    if result.dry_run:
        typer.echo(f"dry run: would {result.action.removesuffix('d')} the comment on {target}#{pr}")
    else:
        typer.echo(f"{result.action} comment {result.comment_id} on {target}#{pr}: {result.url}")
    if result.other_marked:
        typer.echo(f"note: {result.other_marked} more comment(s) carry {tag}: left alone, delete them by hand")


@app.command("setup-github")
def setup_github(
    *,
    reviewer: Annotated[
        list[str] | None,
        typer.Option("--reviewer", metavar="LOGIN", help="Who may approve production deployments (repeatable)."),
    ] = None,
    team: Annotated[
        list[str] | None,
        typer.Option("--team", metavar="ORG/SLUG", help="A team who may approve them (repeatable)."),
    ] = None,
    wait_timer: Annotated[
        int, typer.Option("--wait-timer", help="Minutes a production job waits before it may run (0-43200).")
    ] = 0,
    branch: Annotated[str, typer.Option(help="The one branch that may deploy to staging and production.")] = "main",
    repo: RepoOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Create the staging and production environments (production waits for a reviewer), then verify them."""
    from forkcast import github
    from forkcast import github_setup as environments

    target = _repo(repo)
    try:
        names = environments.reviewer_names(reviewer or [], team or [])
        environments.check_options(wait_timer, branch)
        if dry_run:
            typer.echo("dry run: nothing is written to GitHub")
        with _github_errors(), github.client(dry_run=dry_run, echo=typer.echo) as gh:
            result = environments.setup(gh, target, names, wait_timer=wait_timer, branch=branch)
    except environments.SetupError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    typer.echo(environments.summary(result))
    if not result.dry_run and not result.verified:
        raise _fail(environments.not_protected_message(result), EXIT_CHECK_FAILED)


@app.command()
def alert(
    *,
    marker: Annotated[str, typer.Option(help="Hidden marker naming the problem, e.g. forkcast-drift.")],
    body_file: Annotated[Path, typer.Option("--body-file", help="Markdown: the issue body, or the clearing comment.")],
    title: Annotated[str, typer.Option(help="The issue's title (when the problem is on).")] = "",
    label: Annotated[list[str] | None, typer.Option(help="Labels for a new issue (repeatable).")] = None,
    cleared: Annotated[bool, typer.Option("--cleared", help="The problem is over: comment and close.")] = False,
    author: Annotated[
        str | None, typer.Option(help="Only an issue opened by this account counts (e.g. github-actions[bot]).")
    ] = None,
    repo: RepoOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Open or update ONE issue while a problem lasts; comment on it and close it when it clears."""
    from forkcast import alert as alerts
    from forkcast import github

    target = _repo(repo)
    body = body_file.read_text() if body_file.is_file() else ""
    if not body.strip():
        raise _fail(f"no body in {body_file}: nothing to say", EXIT_USAGE)
    if not cleared and not title.strip():
        raise _fail("--title is needed to open or update the issue", EXIT_USAGE)
    try:
        github.hidden_marker(marker)
    except ValueError as exc:
        raise _fail(str(exc), EXIT_USAGE) from exc
    with _github_errors(), github.client(dry_run=dry_run, echo=typer.echo) as gh:
        if cleared:
            result = alerts.clear_alert(gh, target, marker, body, author)
        else:
            result = alerts.raise_alert(gh, target, marker, title=title, body=body, labels=label or [], author=author)
    where = f"{target}#{result.number}" if result.number else target
    typer.echo(
        f"{'dry run: would have ' if result.dry_run else ''}{result.action}: {where} {result.url or ''}".rstrip()
    )


@app.command("check-approval")
def check_approval(repo: RepoOption = None) -> None:
    """Exit 1 unless production deployments wait for a required reviewer (the release checks before deploying)."""
    from forkcast import github
    from forkcast import github_setup as environments

    target = _repo(repo)
    with _github_errors(), github.client(echo=typer.echo) as gh:
        problems = environments.approval_problems(gh, target)
    if problems:
        raise _fail(
            f"production on {target} would deploy without an approval: {'; '.join(problems)}. Run "
            "`forkcast setup-github --reviewer YOUR_LOGIN` once (see the README, Fork it), then re-run this workflow",
            EXIT_CHECK_FAILED,
        )
    typer.echo(f"production on {target} waits for a required reviewer's approval")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (for tests and `python -m forkcast`)."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv if argv is not None else sys.argv[1:], prog_name="forkcast")
    except SystemExit as exit_:  # standalone mode always exits, usage errors included
        if exit_.code is None:
            return 0
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0
