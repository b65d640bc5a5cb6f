"""The release line's commands for GitHub: job summary, pull-request comment, image plan, manifest,
environments and their approval."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from forkcast import paths
from forkcast.cli.common import (
    EXIT_CHECK_FAILED,
    EXIT_NOTHING_YET,
    EXIT_USAGE,
    PARAMS_FILE,
    DryRunOption,
    ParamsOption,
    RepoOption,
    fail,
    github_errors,
    repo_name,
    step,
)

app = typer.Typer()


@app.command("job-summary")
def job_summary(
    outputs: Annotated[
        bool, typer.Option("--outputs", help="Print `eligible=true|false` for $GITHUB_OUTPUT instead.")
    ] = False,
) -> None:
    """Print the pipeline's Markdown summary (validation, metrics, gate) for $GITHUB_STEP_SUMMARY."""
    from forkcast.release import ci_report

    if outputs:
        gate = ci_report.gate_outputs()
        if gate is None:
            raise fail(f"no gate verdict ({paths.GATE_JSON}): the pipeline stopped before the register stage", 1)
        typer.echo(gate, nl=False)
    else:
        typer.echo(ci_report.job_summary())


@app.command("pr-report")
def pr_report(
    base: Annotated[str, typer.Option(help="Git revision to compare with, e.g. origin/main.")] = "origin/main",
) -> None:
    """Print the pull-request comment: params and metrics diff against BASE, validation, gate."""
    from forkcast.release import ci_report

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
    from forkcast.release import records
    from forkcast.serving import build as bento

    bento.use_project_store()
    from bentoml.exceptions import BentoMLException

    try:
        record = records.read_build_record(bento.BUILD_JSON)
        try:
            with step("assemble the image's build context (bento, models, Dockerfile)"):
                context = records.image_context(record["bento"])
        except BentoMLException as exc:
            raise records.ReleaseError(f"{record['bento']} is not in the store: run `forkcast build`") from exc
        plan = records.plan_image(record, context, image, source=source, revision=revision)
    except records.ReleaseError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    from forkcast import atomic

    args_file = output or records.IMAGE_ARGS
    atomic.write_text(args_file, "\n".join(plan.buildx_args()) + "\n")
    typer.echo(f"image {', '.join(plan.tags)} from {plan.context}; arguments in {args_file}")


@release_app.command("manifest")
def release_manifest(
    *,
    image: Annotated[str, typer.Option(help="Image repository the digest belongs to ('' for a bento only).")] = "",
    digest: Annotated[str, typer.Option(help="The pushed image's digest, sha256:...")] = "",
    commit: Annotated[str, typer.Option(help="Git commit being released.")] = "",
    run_url: Annotated[str, typer.Option(help="URL of the workflow run.")] = "",
    approved_by: Annotated[str, typer.Option(help="Who approved the production deployment (GitHub logins).")] = "",
    params_file: ParamsOption = PARAMS_FILE,
) -> None:
    """Write outputs/release/manifest.{json,md}: model, data hash, params, commit, metrics, digest, approver."""
    from forkcast.model import lineage
    from forkcast.release import records
    from forkcast.serving import build as bento

    try:
        record = records.read_build_record(bento.BUILD_JSON)
        manifest = records.manifest(
            record,
            params_file,
            image=image or None,
            digest=digest or None,
            commit=commit or lineage.git_commit() or "unknown",
            run_url=run_url or None,
            approved_by=approved_by or None,
        )
    except records.ReleaseError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    path = records.write_manifest(manifest)
    typer.echo(f"release {manifest['release']}: {manifest['image'] or manifest['bento']}  -> {path}")


@release_app.command("deployment")
def release_deployment(
    *,
    environment: Annotated[str, typer.Option(help="The environment deployed to: staging or production.")],
    target: Annotated[str, typer.Option(help="The deploy target that ran (runner, kubernetes, ...).")] = "",
    image: Annotated[str, typer.Option(help="The image deployed, repository@sha256:...")] = "",
    bento: Annotated[str, typer.Option(help="The bento deployed.")] = "",
    model_version: Annotated[str, typer.Option(help="The registered model version it serves.")] = "",
    url: Annotated[str, typer.Option(help="Where it serves.")] = "",
    run_url: Annotated[str, typer.Option(help="URL of the workflow run.")] = "",
    approved_in_run: Annotated[
        int | None,
        typer.Option(metavar="RUN_ID", help="Read who approved the environment in this run (needs actions: read)."),
    ] = None,
    release: Annotated[
        str, typer.Option(metavar="TAG", help="Extend this release's deployments record (when it is published).")
    ] = "",
    also: Annotated[
        list[str] | None, typer.Option(metavar="JSON", help="An earlier deployment's record, e.g. staging's.")
    ] = None,
    repo: RepoOption = None,
    output: Annotated[Path, typer.Option(help="Where the deployments record is written.")] = (
        paths.OUTPUTS / "release" / "deployments.jsonl"
    ),
) -> None:
    """Record one deployment (who approved it, where it serves) in a release's deployments record, and print
    `deployment=<json>`, `approved_by=` and `recorded=true|false` for $GITHUB_OUTPUT: `forkcast history --repo`
    reads the record back. When the release's record cannot be read, none is written (`recorded=false`)."""
    import json
    from dataclasses import asdict

    from forkcast import atomic
    from forkcast.model.history import DeploymentEvent, now
    from forkcast.release import records

    if environment not in ("staging", "production"):
        raise fail(f"--environment is staging or production, not '{environment}'", EXIT_USAGE)
    earlier = []
    for text in also or []:
        if not text.strip():  # an empty job output: the earlier job recorded nothing
            continue
        try:
            earlier.append(asdict(DeploymentEvent.from_dict(json.loads(text))))
        except ValueError as exc:
            raise fail(f"--also is not a deployment record ({exc}): {text[:200]}", EXIT_USAGE) from exc
    target_repo = repo_name(repo) if approved_in_run is not None or release else ""
    approved_by = _approvers(target_repo, approved_in_run, environment) if approved_in_run is not None else None
    event = DeploymentEvent(
        at=now(), environment=environment, target=target or "unknown", model_version=model_version or None,
        bento=bento or None, image=image or None, url=url or None, approved_by=approved_by,
        workflow_run=run_url or None,
    )  # fmt: skip
    try:
        printed = records.step_outputs({"deployment": json.dumps(asdict(event)), "approved_by": approved_by})
    except records.ReleaseError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    recorded = _recorded(target_repo, release) if release else []
    if recorded is None:  # replacing a record that could not be read would lose it: leave it as it is
        output.unlink(missing_ok=True)
        typer.echo(f"{printed}recorded=false")
        return
    # Each deployment once: a re-run of the production job hands over staging's record again.
    lines = dict.fromkeys(json.dumps(line, sort_keys=True) for line in [*recorded, *earlier, asdict(event)])
    atomic.write_text(output, "".join(line + "\n" for line in lines))
    typer.echo(f"{printed}recorded=true")
    typer.echo(f"{environment}: {image or bento} recorded in {output} ({len(lines)} deployment(s))", err=True)


def _approvers(repo: str, run_id: int, environment: str) -> str | None:
    """Who approved `environment` in the run (`alice, bob`). GitHub failing here warns and records no approver
    rather than failing a deployment that already serves."""
    from forkcast.release import github
    from forkcast.release.github_registry import approvers

    try:
        with github.client() as gh:
            found = approvers(gh, repo, run_id, environment)
    except (github.GitHubError, github.TokenMissingError) as exc:
        reason = str(exc).splitlines()[0]
        typer.echo(f"::warning::who approved {environment} is not recorded ({reason}): the job needs "
                   "`permissions: actions: read` to read the run's review history", err=True)  # fmt: skip
        return None
    if not found:
        typer.echo(f"::warning::no approval of {environment} is recorded in run {run_id}", err=True)
    return ", ".join(found) or None


def _recorded(repo: str, release: str) -> list[dict[str, Any]] | None:
    """The release's deployments so far ([] before it is published); None, with a warning, when they cannot be
    read."""
    from forkcast.release import github
    from forkcast.release.github_registry import release_deployments

    try:
        with github.client() as gh:
            return release_deployments(gh, repo, release)
    except (github.GitHubError, github.TokenMissingError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        typer.echo(f"::warning::the deployments record of {release} cannot be read ({reason}): it is left as it "
                   "is, without this deployment", err=True)  # fmt: skip
        return None


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
    from forkcast.release import records
    from forkcast.serving import build as bento

    try:
        if pushed:
            values = records.pushed_image(pushed, image)
        elif manifest_file:
            values = records.manifest_outputs(records.read_manifest(manifest_file))
        else:
            values = records.build_outputs(records.read_build_record(bento.BUILD_JSON))
        typer.echo(records.step_outputs(values), nl=False)
    except records.ReleaseError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


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
    from forkcast.release import github

    target = repo_name(repo)
    if str(body_file) == "-":
        body = sys.stdin.read()
    elif body_file.is_file():
        body = body_file.read_text()
    else:
        raise fail(f"no body file {body_file}", EXIT_USAGE)
    if not body.strip():
        raise fail(f"the body in {body_file} is empty: nothing to post", EXIT_USAGE)
    try:
        tag = github.hidden_marker(marker)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    with github_errors(), github.client(dry_run=dry_run, echo=typer.echo) as gh:
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
    from forkcast.release import github
    from forkcast.release import github_setup as environments

    target = repo_name(repo)
    try:
        names = environments.reviewer_names(reviewer or [], team or [])
        environments.check_options(wait_timer, branch)
        if dry_run:
            typer.echo("dry run: nothing is written to GitHub")
        with github_errors(), github.client(dry_run=dry_run, echo=typer.echo) as gh:
            result = environments.setup(gh, target, names, wait_timer=wait_timer, branch=branch)
    except environments.SetupError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    typer.echo(environments.summary(result))
    if not result.dry_run and not result.verified:
        raise fail(environments.not_protected_message(result), EXIT_CHECK_FAILED)


@app.command("check-approval")
def check_approval(repo: RepoOption = None) -> None:
    """Exit 1 unless production deployments wait for a required reviewer (the release checks before deploying)."""
    from forkcast.release import github
    from forkcast.release import github_setup as environments

    target = repo_name(repo)
    with github_errors(), github.client(echo=typer.echo) as gh:
        problems = environments.approval_problems(gh, target)
    if problems:
        raise fail(
            f"production on {target} would deploy without an approval: {'; '.join(problems)}. Run "
            "`forkcast setup-github --reviewer YOUR_LOGIN` once (see the README, Fork it), then re-run this workflow",
            EXIT_CHECK_FAILED,
        )
    typer.echo(f"production on {target} waits for a required reviewer's approval")


MODEL_ASSETS_DIR = paths.OUTPUTS / "release" / "model"


@release_app.command("model-assets")
def release_model_assets(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write them.")] = MODEL_ASSETS_DIR,
) -> None:
    """Write the served model as a production release carries it (model.skops, model.onnx, metadata.json): the
    registry of a fork without an MLflow server."""
    from forkcast.release.github_registry import RegistryAssetsError, write_model_assets

    try:
        written = write_model_assets(paths.SERVED_PICKLE, paths.SERVED_ONNX, paths.SERVED_METADATA, directory)
    except RegistryAssetsError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    typer.echo(" ".join(str(path) for path in written))


@release_app.command("production-commit")
def release_production_commit(repo: RepoOption = None) -> None:
    """Print the commit production's release was made from (exit 3 when there is no release yet): the nightly
    drift job takes its reference data and settings from there, not from main."""
    from forkcast.release import github
    from forkcast.release.github_registry import RegistryAssetsError, production_commit

    target = repo_name(repo)
    with github_errors():
        try:
            with github.client() as gh:
                found = production_commit(gh, target)
        except RegistryAssetsError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
    if found is None:
        raise fail(f"no release of {target} carries a model yet: nothing is in production", EXIT_NOTHING_YET)
    tag, commit = found
    typer.echo(f"production runs {tag}, released from {commit}", err=True)
    typer.echo(commit)


@release_app.command("production-url")
def release_production_url(repo: RepoOption = None) -> None:
    """Print where production serves, as its last successful deployment recorded it (exit 3 when none did): the
    hourly health probe watches it when FORKCAST_PRODUCTION_URL is not set."""
    import os

    from forkcast.release import github
    from forkcast.release.github_registry import production_url, reachable_only_inside

    target = repo_name(repo)
    with github_errors(), github.client() as gh:
        found = production_url(gh, target)
    if found is None:
        raise fail(
            f"no deployment of {target} to production recorded a URL: nothing lasting serves yet "
            "(FORKCAST_DEPLOY_TARGET kubernetes or self-hosted), or set FORKCAST_PRODUCTION_URL",
            EXIT_NOTHING_YET,
        )
    if os.environ.get("RUNNER_ENVIRONMENT") == "github-hosted" and reachable_only_inside(found):
        raise fail(
            f"production serves at {found}, which a GitHub-hosted runner cannot reach: set FORKCAST_URL (an ingress "
            "or proxy) for production, or run the probe where it can (FORKCAST_RUNNER_MONITOR)",
            EXIT_NOTHING_YET,
        )
    typer.echo(found)


@release_app.command("production-bento")
def release_production_bento(
    repo: RepoOption = None,
    directory: Annotated[Path, typer.Option("--dir", help="Where the release's bento is downloaded.")] = (
        paths.OUTPUTS / "release" / "production"
    ),
) -> None:
    """Import the bento production serves (its GitHub Release carries it) into the project's store and print
    `release=` and `bento=` for $GITHUB_OUTPUT: the Score workflow scores with production's model, no rebuild."""
    from forkcast.release import github, records
    from forkcast.release.github_registry import NoProductionBentoError, RegistryAssetsError, production_bento

    target = repo_name(repo)
    with step(f"fetch the bento production serves on {target}"), github_errors():
        try:
            with github.client() as gh:
                release, bento = production_bento(gh, target, directory, note=lambda line: typer.echo(line, err=True))
        except NoProductionBentoError as exc:
            raise fail(str(exc), EXIT_NOTHING_YET) from exc
        except RegistryAssetsError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
    typer.echo(records.step_outputs({"release": release, "bento": bento}), nl=False)


@release_app.command("seed-registry")
def release_seed_registry(
    repo: RepoOption = None,
    params_file: ParamsOption = PARAMS_FILE,
    directory: Annotated[Path, typer.Option("--dir", help="Where the releases' models are downloaded.")] = (
        paths.OUTPUTS / "release" / "registry"
    ),
) -> None:
    """Register production and the recent production releases (GitHub Releases that carry a model) in the local
    MLflow store, so the gate compares with them: the pipeline workflow runs it when no MLFLOW_TRACKING_URI is set."""
    from forkcast.cli.common import load_params, tracking_errors
    from forkcast.release import github
    from forkcast.release.github_registry import RegistryAssetsError, seed

    params = load_params(params_file)
    target = repo_name(repo)
    with step(f"seed the local registry from the releases of {target}"), github_errors(), tracking_errors():
        try:
            with github.client() as gh:
                seeded = seed(
                    gh, target, params, local_dir=paths.LOCAL_MLFLOW_DIR, directory=directory,
                    progress=lambda line: typer.echo(line, err=True),
                )  # fmt: skip
        except RegistryAssetsError as exc:
            raise fail(str(exc), EXIT_CHECK_FAILED) from exc
    readable = [entry for entry in seeded if entry.skipped is None]
    if not readable:
        typer.echo(f"no release of {target} carries a readable model: the gate compares with the baseline only")
        return
    production = next((entry for entry in readable if entry.production), None)
    where = f"production is {production.tag} (v{production.version})" if production else "none of them is production"
    skipped = f"; {len(seeded) - len(readable)} skipped (see above)" if len(readable) < len(seeded) else ""
    typer.echo(f"registered {len(readable)} released model(s) from {target}; {where}{skipped}")
