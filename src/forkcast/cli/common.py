"""What every command shares: exit codes, errors, params, progress lines, and the options used by several groups.

config is imported only inside functions: building its pydantic models costs half a second `--help` need not pay.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from forkcast import paths

if TYPE_CHECKING:
    from forkcast.config import Params
    from forkcast.data.declaration import Inputs


PARAMS_FILE = paths.PARAMS_FILE
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_NOTHING_YET = 3  # nothing to work on yet (no release, no data): not a failure


ParamsOption = Annotated[Path, typer.Option("--params", help="The params file.")]


def fail(message: str, code: int) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def load_params(path: Path) -> Params:
    from forkcast.config import ConfigError, load_params

    try:
        return load_params(path)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


@contextmanager
def step(name: str) -> Iterator[None]:
    """Print what a step does and how long it took, so long steps are never silent."""
    typer.echo(f"{name} ...", err=True)
    started = time.perf_counter()
    yield
    typer.echo(f"{name}: done in {time.perf_counter() - started:.1f}s", err=True)


def require(*files: Path) -> None:
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise fail(f"missing input {', '.join(missing)}: run the earlier stages first (`dvc repro`)", EXIT_USAGE)


def read_inputs() -> Inputs:
    """The model's input contract as the prepare stage wrote it."""
    from forkcast.data.declaration import read_inputs as read

    require(paths.PREPARED_INPUTS)
    inputs = read(paths.PREPARED_INPUTS)
    assert inputs is not None  # required just above
    return inputs


def read_splits() -> dict[str, Any]:
    from forkcast.data.prepare import read_split

    files = {name: paths.prepared_split(name) for name in paths.SPLITS}
    require(*files.values())
    return {name: read_split(path) for name, path in files.items()}


@contextmanager
def tracking_errors() -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    from forkcast.model.registry import TrackingUnavailableError

    try:
        yield
    except TrackingUnavailableError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except MlflowException as exc:
        if "failed with exception" in exc.message:  # the server stopped answering after the start-up check
            raise fail(
                f"the MLflow server stopped answering: {exc.message}. This run is incomplete and its verdict was not "
                "written; start the server (or unset MLFLOW_TRACKING_URI) and run again",
                EXIT_CHECK_FAILED,
            ) from exc
        usage = exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}
        code = EXIT_USAGE if usage else EXIT_CHECK_FAILED
        raise fail(f"MLflow refused the request: {exc.message}", code) from exc


EnvironmentOption = Annotated[str, typer.Option("--env", help="staging or production.")]


def check_environment(name: str) -> Any:
    from forkcast.serving.deploy import ENVIRONMENTS

    if name not in ENVIRONMENTS:
        raise fail(f"--env must be one of {', '.join(ENVIRONMENTS)}, not '{name}'", EXIT_USAGE)
    return name


def inference_log_of(root: str, environment: str) -> str:
    import os

    root = os.environ.get("FORKCAST_INFERENCE_LOG") or root  # set but empty (an unset CI variable): the default
    return f"{root.rstrip('/')}/{environment}" if "://" in root else str((Path(root) / environment).resolve())


RepoOption = Annotated[
    str | None, typer.Option("--repo", help="OWNER/NAME (default: $GITHUB_REPOSITORY, or the github.com `origin`).")
]


DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print each write (endpoint and JSON payload) instead of sending it.")
]


def repo_name(value: str | None) -> str:
    from forkcast.release.github import default_repo, parse_repo

    text = value or default_repo()
    if not text:
        raise fail("give --repo OWNER/NAME: no $GITHUB_REPOSITORY and no github.com `origin` remote", EXIT_USAGE)
    try:
        return parse_repo(text)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc


@contextmanager
def github_errors() -> Iterator[None]:
    """No token, or a request GitHub refuses (4xx), is a usage error; GitHub failing or out of reach is 1."""
    from forkcast.release.github import GitHubError, TokenMissingError

    try:
        yield
    except TokenMissingError as exc:
        raise fail(str(exc), EXIT_USAGE) from exc
    except GitHubError as exc:
        refused = exc.status is not None and 400 <= exc.status < 500 and exc.status != 429
        raise fail(str(exc), EXIT_USAGE if refused else EXIT_CHECK_FAILED) from exc


def service_of(url: str | None, env: str | None) -> tuple[str, str | None]:
    """The URL of the service to talk to, and its environment (None for a bare --url)."""
    from forkcast.serving import deploy as deployments

    if (url is None) == (env is None):
        raise fail("give exactly one of --url and --env", EXIT_USAGE)
    if url is not None:
        if not url.startswith(("http://", "https://")):
            raise fail(f"--url must start with http:// or https://, not '{url}'", EXIT_USAGE)
        return url.rstrip("/"), None
    environment = check_environment(str(env))
    deployed = deployments.load(environment)
    if deployed is None:
        raise fail(f"nothing is deployed to {environment}: run `forkcast deploy --env {environment}`", EXIT_USAGE)
    return deployed.url, environment
