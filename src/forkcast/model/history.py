"""Which version worked on which data: every registered model version with its lineage, what changed in its
params since the version before, its metrics and backtest, its data checks, its gate verdict, and where it was
deployed (`forkcast history`).

The registry (MLflow: local store or server) holds versions, runs and aliases; deployments are read from
`outputs/deploy/history.jsonl`, one line per deployment that came up, which `forkcast deploy` and the lasting
deploy targets append to (a record of the current deployment alone would forget the January one).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forkcast import paths

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from forkcast.config import Params

DEPLOYMENTS_LOG = paths.OUTPUTS / "deploy" / "history.jsonl"
VALIDATION_ARTIFACT = "reports/report.json"  # the data checks' report, logged with each registering run


@dataclass(frozen=True)
class DeploymentEvent:
    """One deployment that came up: which release, where, when, and who approved it."""

    at: str
    environment: str
    target: str  # local, kubernetes, self-hosted
    model_version: str | None
    bento: str | None = None
    image: str | None = None
    url: str | None = None
    approved_by: str | None = None
    workflow_run: str | None = None

    @classmethod
    def from_dict(cls, entry: Any) -> DeploymentEvent:
        """A record as written, keeping the fields this version knows (a newer writer may add some); ValueError
        naming the field when it is not one (a missing time, place or target, or a value that is not text)."""
        if not isinstance(entry, dict):
            raise ValueError(f"a deployment record is a JSON object, not {type(entry).__name__}")
        known = {key: value for key, value in entry.items() if key in cls.__dataclass_fields__}
        for name in ("at", "environment", "target"):
            if not isinstance(known.get(name), str) or not known[name]:
                raise ValueError(f"a deployment record needs `{name}` as text, not {known.get(name)!r}")
        for name, value in known.items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` of a deployment record is text or null, not {value!r}")
        return cls(**{"model_version": None, **known})


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def append_deployment(event: DeploymentEvent, log: Path = DEPLOYMENTS_LOG) -> None:
    """Append one line: whole lines only (one write of a line shorter than the pipe buffer), never rewritten."""
    log.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(event), sort_keys=True) + "\n"
    with log.open("a", encoding="utf-8") as stream:
        stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())


def read_deployments(log: Path = DEPLOYMENTS_LOG) -> list[DeploymentEvent]:
    """The deployments so far, oldest first; a line that is not a whole record (a crash mid-write) is skipped."""
    if not log.exists():
        return []
    events = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            events.append(DeploymentEvent.from_dict(json.loads(line)))
        except ValueError:
            continue
    return events


@dataclass(frozen=True)
class VersionHistory:
    """One registered version, as `forkcast history` shows it."""

    version: str
    registered_at: str
    run_id: str | None
    git_commit: str | None
    data_hash: str | None
    model_type: str | None
    gate: str | None
    aliases: list[str]
    released_at: str | None  # when production last started serving it (the registry's tag)
    github_release: str | None
    metrics: dict[str, float]
    params: dict[str, str]
    params_changed: dict[str, list[str | None]]  # key -> [before, after], against the version before
    checks_passed: float | None  # share of the data checks that passed, from the run's validation report
    deployments: list[DeploymentEvent] = field(default_factory=list)


def params_diff(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str | None]]:
    return {
        key: [before.get(key), after.get(key)]
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    }


def run_checks_passed(run_id: str) -> float | None:
    """The share of data checks that passed, from the validation report the run logged."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from forkcast.data.validation import share_of_checks_passed

    with tempfile.TemporaryDirectory() as scratch:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=VALIDATION_ARTIFACT, dst_path=scratch
            )
        except (MlflowException, OSError):
            return None  # a release seeded from GitHub, or a run from before its report was logged
        return share_of_checks_passed(Path(path))


def _iso(milliseconds: int | None) -> str:
    if not milliseconds:
        return ""
    return datetime.fromtimestamp(milliseconds / 1000, UTC).isoformat(timespec="seconds")


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """alias -> version (a search of versions does not fill in their aliases; the registered model lists them)."""
    return {str(alias): str(version) for alias, version in (client.get_registered_model(name).aliases or {}).items()}


def versions(client: MlflowClient, name: str, deployments: list[DeploymentEvent]) -> list[VersionHistory]:
    """Every registered version of `name`, oldest first, with the deployments of each."""
    from forkcast.model.registry import RELEASED_AT, all_versions

    found = sorted(all_versions(client, name), key=lambda v: int(v.version))
    aliases = _aliases(client, name) if found else {}
    history: list[VersionHistory] = []
    previous: dict[str, str] = {}
    for entry in found:
        tags = dict(entry.tags or {})
        run = client.get_run(entry.run_id) if entry.run_id else None
        params = dict(run.data.params) if run else {}
        metrics = {key: float(value) for key, value in (run.data.metrics if run else {}).items()}
        version = str(entry.version)
        history.append(
            VersionHistory(
                version=version,
                registered_at=_iso(entry.creation_timestamp),
                run_id=entry.run_id,
                git_commit=tags.get("git_commit"),
                data_hash=tags.get("data_hash"),
                model_type=tags.get("model_type"),
                gate=tags.get("gate"),
                aliases=sorted(alias for alias, aliased in aliases.items() if aliased == version),
                released_at=tags.get(RELEASED_AT),
                github_release=tags.get("github_release"),
                metrics=metrics,
                params=params,
                params_changed=params_diff(previous, params) if history and params else {},
                checks_passed=run_checks_passed(entry.run_id) if entry.run_id else None,
                deployments=[event for event in deployments if event.model_version == version],
            )
        )
        previous = params or previous
    return history


def read(local_dir: Path, params: Params, log: Path = DEPLOYMENTS_LOG) -> list[VersionHistory]:
    """The history of the project's registered model, from its tracking store and the deployments log."""
    from mlflow import MlflowClient

    from forkcast.model.registry import use_tracking

    use_tracking(local_dir, params.tracking.experiment)
    return versions(MlflowClient(), params.tracking.registered_model, read_deployments(log))


def to_json(history: list[VersionHistory]) -> str:
    return json.dumps([asdict(entry) for entry in history], indent=2, sort_keys=True)


def _short(value: str | None, width: int) -> str:
    return (value or "-")[:width]


def _where(entry: VersionHistory) -> str:
    """Its aliases, then its last three deployments, each `environment date time target digest by approver`."""
    places = list(entry.aliases)
    for event in entry.deployments[-3:]:
        who = f" by {event.approved_by}" if event.approved_by else ""
        what = event.image.rsplit("@sha256:", 1)[-1][:12] if event.image else (event.bento or "").split(":")[-1]
        places.append(f"{event.environment} {event.at[:10]} {event.at[11:16]} {event.target} {what}{who}")
    if len(entry.deployments) > 3:
        places.insert(len(entry.aliases), f"... {len(entry.deployments) - 3} earlier")
    return "\n".join(places) or "-"


def label(entry: VersionHistory) -> str:
    """`v3`, and the GitHub release that carries it where there is one (the tag a rollback names)."""
    return f"v{entry.version} {entry.github_release}" if entry.github_release else f"v{entry.version}"


def render_table(history: list[VersionHistory], metric: str) -> str:
    """A table a person reads, newest first, and under it what changed in each version's params."""
    import shutil
    import sys
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(history)} versions, newest first", show_lines=True)
    table.add_column("version", no_wrap=True)
    for column in ("created", "commit", "data", "model", f"test {metric}", f"backtest {metric}", "checks", "gate"):
        table.add_column(column, overflow="fold")
    table.add_column("deployed (digest, approver)", overflow="fold", min_width=34)
    for entry in reversed(history):
        test = entry.metrics.get(f"test_{metric}")
        mean = entry.metrics.get(f"backtest_model_{metric}_mean")
        std = entry.metrics.get(f"backtest_model_{metric}_std")
        table.add_row(
            label(entry).replace(" ", "\n"),
            entry.registered_at[:10] + "\n" + entry.registered_at[11:16],
            _short(entry.git_commit, 7),
            _short(entry.data_hash, 8),
            (entry.model_type or "-").replace("_", " "),
            f"{test:.2f}" if test is not None else "-",
            f"{mean:.2f} ± {std:.2f}" if mean is not None and std is not None else "-",
            f"{entry.checks_passed:.1%}" if entry.checks_passed is not None else "-",
            entry.gate or "-",
            _where(entry),
        )
    out = StringIO()
    # A terminal's own width; a log, a pipe or a test gets a table wide enough not to fold the deployments.
    width = max(120, shutil.get_terminal_size().columns) if sys.stdout.isatty() else 170
    console = Console(file=out, width=width, color_system=None)
    console.print(table)
    changes = [entry for entry in reversed(history) if entry.params_changed]
    if changes:
        console.print("params changed since the version before:")
        for entry in changes:
            shown = ", ".join(f"{key} {old} → {new}" for key, (old, new) in list(entry.params_changed.items())[:8])
            more = len(entry.params_changed) - 8
            console.print(f"  {label(entry)}: {shown}" + (f" (and {more} more: --json)" if more > 0 else ""))
    return out.getvalue()
