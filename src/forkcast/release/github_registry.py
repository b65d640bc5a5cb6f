"""GitHub Releases as the model registry of a fork that has no MLflow server.

Each pipeline run on GitHub starts with an empty local MLflow store, so without help its gate would compare with
nothing. The release workflow therefore publishes the served model with every production release
(`forkcast-v<version>-<digest>`): the pipeline as skops (loaded without pickle), its ONNX export and its
metadata; the release it marks as the repository's latest is production (a rollback marks the release it
restores). Before `dvc repro`, the pipeline workflow seeds the local store from the recent releases, oldest first,
with production's alias on the latest: the gate then runs exactly as it does locally.
"""

from __future__ import annotations

import json
import lzma
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forkcast import atomic

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from forkcast.config import Params
    from forkcast.model.history import VersionHistory
    from forkcast.release.github import GitHub

RELEASE_PREFIX = "forkcast-v"
SKOPS_FILE = "model.skops"
ONNX_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
MODEL_ASSETS = (SKOPS_FILE, ONNX_FILE, METADATA_FILE)
MANIFEST_FILE = "manifest.json"  # the release manifest: the commit it was released from, among the rest
BENTO_FILE = "bento.bento"  # the bento production serves (`bentoml export`): batch scoring uses it without a rebuild
DEPLOYMENTS_FILE = "deployments.jsonl"  # every deployment of the release (staging, production, rollbacks), a line each


class RegistryAssetsError(Exception):
    """A release's model cannot be written or read back."""


class NoProductionBentoError(RegistryAssetsError):
    """No release production runs carries its bento (none yet, or one published before releases carried it)."""


def write_model_assets(pipeline_file: Path, onnx_file: Path, metadata_file: Path, directory: Path) -> list[Path]:
    """The served model as a release carries it: skops (no pickle to trust), ONNX, metadata."""
    import joblib
    import skops.io

    from forkcast.model.registry import trusted_types

    missing = [str(path) for path in (pipeline_file, onnx_file, metadata_file) if not path.exists()]
    if missing:
        raise RegistryAssetsError(f"missing {', '.join(missing)}: run `dvc repro` first")
    pipeline = joblib.load(pipeline_file)
    try:
        trusted_types(pipeline)  # refuses a pipeline with types from outside scikit-learn
    except TypeError as exc:
        raise RegistryAssetsError(f"{pipeline_file}: {exc}; a release carries scikit-learn models only") from exc
    written = [directory / name for name in MODEL_ASSETS]
    atomic.write_atomic(written[0], lambda tmp: skops.io.dump(pipeline, tmp))
    atomic.write_atomic(written[1], lambda tmp: shutil.copyfile(onnx_file, tmp))
    atomic.write_atomic(written[2], lambda tmp: shutil.copyfile(metadata_file, tmp))
    return written


def load_pipeline(path: Path) -> Pipeline:
    """A released pipeline, loading only scikit-learn types (skops refuses anything else)."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(file=path)
    foreign = [name for name in untrusted if not name.startswith("sklearn.")]
    if foreign:
        raise RegistryAssetsError(f"{path} holds types from outside scikit-learn: {foreign}; not loaded")
    pipeline: Pipeline = skops.io.load(path, trusted=untrusted)
    return pipeline


@dataclass(frozen=True)
class ReleasedModel:
    tag: str
    published_at: str
    assets: dict[str, int]  # asset name -> id, for the model assets
    production: bool  # the repository's latest release
    manifest: int | None = None  # the asset id of its manifest.json
    bento: int | None = None  # the asset id of its bento.bento


@dataclass(frozen=True)
class PublishedRelease:
    """A published (not draft) Forkcast release: its tag, when, and its assets by name."""

    tag: str
    published_at: str
    assets: dict[str, int]  # asset name -> id
    latest: bool  # what GitHub answers for the repository's latest release


def published_releases(github: GitHub, repo: str) -> tuple[list[PublishedRelease], str | None]:
    """Every published Forkcast release (`forkcast-v…`), oldest first; and the tag of the repository's latest release
    (production's, whether or not Forkcast made it)."""
    from forkcast.release.github import GitHubError

    try:
        latest = github.get(f"/repos/{repo}/releases/latest").get("tag_name")
    except GitHubError as exc:
        if exc.status != 404:
            raise
        latest = None  # no release yet
    found = []
    for release in github.paginate(f"/repos/{repo}/releases"):
        tag = str(release.get("tag_name", ""))
        if release.get("draft") or not tag.startswith(RELEASE_PREFIX):
            continue
        assets = {str(asset["name"]): int(asset["id"]) for asset in release.get("assets", [])}
        found.append(PublishedRelease(tag, str(release.get("published_at") or ""), assets, tag == latest))
    return sorted(found, key=lambda release: release.published_at), latest


def released_models(github: GitHub, repo: str, count: int) -> tuple[list[ReleasedModel], str | None]:
    """The last `count` published Forkcast releases that carry a model, oldest first, production among them; and a
    note when the repository's latest release is not one of them (production is then the newest that is)."""
    published, latest = published_releases(github, repo)
    found = [
        ReleasedModel(
            release.tag,
            release.published_at,
            {name: release.assets[name] for name in MODEL_ASSETS},
            release.latest,
            release.assets.get(MANIFEST_FILE),
            release.assets.get(BENTO_FILE),
        )
        for release in published
        if set(MODEL_ASSETS) <= set(release.assets)
    ]
    note = None
    if found and not any(release.production for release in found):
        newest = found[-1]
        note = (
            f"the repository's latest release ({latest or 'none'}) carries no Forkcast model: production is taken to "
            f"be the newest release that does, {newest.tag}"
        )
        found[-1] = replace(newest, production=True)
    recent = found[-count:]
    current = next((release for release in found if release.production), None)
    if current is not None and current not in recent:  # rolled back to an older release: it is production
        recent = [current, *(found[-(count - 1) :] if count > 1 else [])]
        recent.sort(key=lambda release: release.published_at)
    return recent, note


def production_commit(github: GitHub, repo: str) -> tuple[str, str] | None:
    """The tag of the release production runs and the commit it was released from (its manifest's `git_commit`);
    None when no release carries a model yet."""
    import re

    releases, _ = released_models(github, repo, 1)
    current = next((release for release in releases if release.production), None)
    if current is None:
        return None
    if current.manifest is None:
        raise RegistryAssetsError(f"{current.tag} carries no {MANIFEST_FILE}: which commit it came from is unknown")
    try:
        manifest = _json_object(github.download(f"/repos/{repo}/releases/assets/{current.manifest}"))
    except ValueError as exc:
        raise RegistryAssetsError(f"{current.tag}'s {MANIFEST_FILE} cannot be read ({exc})") from exc
    commit = str(manifest.get("git_commit") or "")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise RegistryAssetsError(f"{current.tag}'s {MANIFEST_FILE} names no commit (git_commit: {commit!r})")
    return current.tag, commit


@dataclass(frozen=True)
class ReleaseRecord:
    """One release as its manifest and its deployments record tell it (`forkcast history --repo`)."""

    tag: str
    published_at: str
    production: bool
    manifest: dict[str, Any]
    deployments: list[dict[str, Any]]


def release_records(github: GitHub, repo: str, count: int) -> tuple[list[ReleaseRecord], list[str]]:
    """The last `count` releases that carry a manifest (production kept among them after a rollback to an older
    one), oldest first, production marked as `released_models` marks it; and a note for each release left out
    because its manifest or its deployments record cannot be read."""
    from forkcast.release.github import GitHubError

    published, latest = published_releases(github, repo)
    with_manifest = [release for release in published if MANIFEST_FILE in release.assets]
    production = next((r for r in with_manifest if r.latest), with_manifest[-1] if with_manifest else None)
    notes = []
    if latest and production is not None and production.tag != latest:
        notes.append(f"the repository's latest release ({latest}) carries no manifest: production is taken to be "
                     f"the newest release that does, {production.tag}")  # fmt: skip
    shown = with_manifest[-count:]
    if production is not None and production not in shown:
        shown = [production, *shown[1:]]  # rolled back to an older release: it is production, and shown
    records = []
    for release in shown:
        try:
            manifest = _json_object(github.download(f"/repos/{repo}/releases/assets/{release.assets[MANIFEST_FILE]}"))
            recorded = _deployments(github, repo, release.assets.get(DEPLOYMENTS_FILE))
        except (ValueError, GitHubError) as exc:
            notes.append(f"{release.tag}: left out, its {MANIFEST_FILE} or {DEPLOYMENTS_FILE} cannot be read ({exc})")
            continue
        deployments = recorded or _well_formed([published_deployment(manifest, release.published_at)])
        records.append(ReleaseRecord(release.tag, release.published_at, release == production, manifest, deployments))
    return records, notes


def published_deployment(manifest: dict[str, Any], published_at: str) -> dict[str, Any]:
    """The one deployment a release from before deployments records is known to have had: production's, when the
    release was published (the workflow publishes it once production serves it and passed its smoke tests)."""
    model = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    version = model.get("version") if model else None
    return {
        "at": published_at, "environment": "production", "target": "unknown",
        "model_version": None if version is None else str(version), "bento": manifest.get("bento"),
        "image": manifest.get("image"), "approved_by": manifest.get("approved_by"),
        "workflow_run": manifest.get("workflow_run"),
    }  # fmt: skip


def release_deployments(github: GitHub, repo: str, tag: str) -> list[dict[str, Any]]:
    """The deployments a release recorded so far: none for a release not published yet; for one published before
    releases kept the record, the production deployment its publication stands for."""
    from forkcast.release.github import GitHubError

    try:
        release = github.get(f"/repos/{repo}/releases/tags/{tag}")
    except GitHubError as exc:
        if exc.status != 404:
            raise
        return []
    assets = {str(asset["name"]): int(asset["id"]) for asset in release.get("assets", [])}
    recorded = _deployments(github, repo, assets.get(DEPLOYMENTS_FILE))
    if recorded or MANIFEST_FILE not in assets:
        return recorded
    manifest = _json_object(github.download(f"/repos/{repo}/releases/assets/{assets[MANIFEST_FILE]}"))
    return _well_formed([published_deployment(manifest, str(release.get("published_at") or ""))])


def _json_object(data: bytes) -> dict[str, Any]:
    found = json.loads(data)
    if not isinstance(found, dict):
        raise ValueError("not a JSON object")
    return found


def _deployments(github: GitHub, repo: str, asset: int | None) -> list[dict[str, Any]]:
    """The well-formed lines of a deployments record (one torn or edited by hand is skipped, never fatal)."""
    if asset is None:
        return []
    lines = github.download(f"/repos/{repo}/releases/assets/{asset}").decode("utf-8", "replace").splitlines()
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return _well_formed(entries)


def _well_formed(entries: list[Any]) -> list[dict[str, Any]]:
    """The entries that are deployment records, as this version writes them (the others skipped)."""
    from forkcast.model.history import DeploymentEvent

    found = []
    for entry in entries:
        try:
            found.append(asdict(DeploymentEvent.from_dict(entry)))
        except ValueError:
            continue
    return found


def approvers(github: GitHub, repo: str, run_id: int, environment: str) -> list[str]:
    """Who approved the run's deployment to `environment`, from the run's review history (`actions: read`), in the
    order GitHub lists them, each once."""
    reviews = github.get(f"/repos/{repo}/actions/runs/{run_id}/approvals")
    found: list[str] = []
    for review in reviews:
        names = {str(env.get("name")) for env in review.get("environments") or []}
        login = str((review.get("user") or {}).get("login") or "")
        if review.get("state") == "approved" and environment in names and login and login not in found:
            found.append(login)
    return found


def production_bento(
    github: GitHub, repo: str, directory: Path, note: Callable[[str], None] = lambda _line: None
) -> tuple[str, str]:
    """The tag of the release production runs and its bento, imported into the project's BentoML store (from
    `directory/<tag>/bento.bento`, downloaded unless the store holds it already)."""
    from forkcast.serving import build as bento

    releases, why = released_models(github, repo, 1)
    if why:
        note(f"note: {why}")
    current = next((release for release in releases if release.production), None)
    if current is None:
        raise NoProductionBentoError(f"no release of {repo} carries a model yet: nothing serves in production")
    if current.bento is None:
        raise NoProductionBentoError(
            f"production's release {current.tag} carries no {BENTO_FILE} (published before releases carried their "
            "bento): score with this branch's model, or release again"
        )
    tag = f"{bento.BENTO_NAME}:{current.tag.removeprefix('forkcast-')}"  # a release is named after its bento
    bento.use_project_store()
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    try:
        bentoml.bentos.get(tag)
        return current.tag, tag
    except NotFound:
        pass
    path = directory / current.tag / BENTO_FILE
    atomic.write_atomic(path, partial(_write, github.download(f"/repos/{repo}/releases/assets/{current.bento}")))
    try:
        imported = bentoml.bentos.import_bento(str(path.resolve()))  # a relative path would be read from /
    except (BentoMLException, OSError, EOFError, ValueError, tarfile.TarError, lzma.LZMAError) as exc:
        raise RegistryAssetsError(f"{current.tag}'s {BENTO_FILE} cannot be imported: {exc}") from exc
    if str(imported.tag) != tag:
        raise RegistryAssetsError(f"{current.tag}'s {BENTO_FILE} holds {imported.tag}, not {tag}")
    return current.tag, tag


def production_url(github: GitHub, repo: str, environment: str = "production", looked_at: int = 10) -> str | None:
    """Where the environment's last successful deployment serves: the `environment_url` GitHub recorded from the
    deploy job's `environment.url`; None when no deployment of the last `looked_at` recorded one."""
    deployments = github.get(f"/repos/{repo}/deployments", {"environment": environment, "per_page": looked_at})
    for deployment in deployments:  # newest first
        statuses = github.get(f"/repos/{repo}/deployments/{deployment['id']}/statuses", {"per_page": 10})
        succeeded = next((status for status in statuses if status.get("state") == "success"), None)
        if succeeded and succeeded.get("environment_url"):
            return str(succeeded["environment_url"])
    return None


def reachable_only_inside(url: str) -> bool:
    """A URL no GitHub-hosted runner can reach: this machine's (loopback) or a cluster's own DNS name."""
    from urllib.parse import urlsplit

    host = (urlsplit(url).hostname or "").lower()
    return host in {"localhost", "::1"} or host.startswith("127.") or host.endswith((".svc", ".cluster.local"))


def download(github: GitHub, repo: str, release: ReleasedModel, directory: Path) -> Path:
    """The release's model assets, into `directory/<tag>/`."""
    target = directory / release.tag
    for name, asset_id in release.assets.items():
        data = github.download(f"/repos/{repo}/releases/assets/{asset_id}")
        atomic.write_atomic(target / name, partial(_write, data))
    return target


def _write(data: bytes, path: Path) -> None:
    path.write_bytes(data)


@dataclass(frozen=True)
class Seeded:
    tag: str
    version: str | None  # None: skipped
    production: bool
    reused: bool  # already in the store (the same bytes)
    skipped: str | None = None  # why a release's model could not be registered


def seed(
    github: GitHub, repo: str, params: Params, *, local_dir: Path, directory: Path,
    progress: Callable[[str], None] = lambda _line: None,
) -> list[Seeded]:  # fmt: skip
    """Register the recent production releases in the local MLflow store (oldest first) and alias production."""
    from forkcast.model.registry import register_released

    releases, note = released_models(github, repo, params.gate.releases_compared)
    if note:
        progress(f"  note: {note}")
    seeded = []
    for release in releases:
        files = download(github, repo, release, directory)
        try:
            metadata: dict[str, Any] = atomic.read_json(files / METADATA_FILE)
            version, reused = register_released(
                local_dir, params, pipeline=load_pipeline(files / SKOPS_FILE), metadata=metadata,
                onnx=(files / ONNX_FILE).read_bytes(), release=release.tag, released_at=release.published_at,
                production=release.production, metadata_file=files / METADATA_FILE,
            )  # fmt: skip
        except (RegistryAssetsError, OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            # One unreadable release must not stop every later pipeline run: it is left out, and said so.
            reason = f"{type(exc).__name__}: {exc}"
            seeded.append(Seeded(release.tag, None, release.production, reused=False, skipped=reason))
            progress(f"  {release.tag}: skipped, its model cannot be read ({reason})")
            continue
        seeded.append(Seeded(release.tag, version, release.production, reused))
        mark = " (production)" if release.production else ""
        progress(f"  {release.tag}{mark}: version {version}{', already here' if reused else ''}")
    return seeded


def flatten(values: Any, prefix: str = "") -> dict[str, str]:
    """params.yaml as dotted keys (`train.hyperparameters.max_iter`), each value as text: what a diff compares."""
    if isinstance(values, dict):
        flat: dict[str, str] = {}
        for key, value in values.items():
            flat |= flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.removesuffix("."): json.dumps(values) if isinstance(values, list) else str(values)}


def history_of(records: list[ReleaseRecord]) -> list[VersionHistory]:
    """The history the GitHub Releases registry holds (`forkcast history --repo`): each release's manifest and
    deployments record, oldest first, with the params each release changed against the one before."""
    from forkcast.model.history import DeploymentEvent, VersionHistory, params_diff

    history: list[VersionHistory] = []
    previous: dict[str, str] = {}
    for record in records:
        manifest = record.manifest
        model = manifest.get("model") or {}
        params = flatten(manifest.get("params") or {})
        metrics = {
            str(key): float(value)
            for key, value in (manifest.get("metrics") or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        deployments = [DeploymentEvent.from_dict(entry) for entry in record.deployments]
        checks = manifest.get("checks_passed")
        history.append(
            VersionHistory(
                version=_text(model.get("version")) or "?",
                registered_at=str(manifest.get("created_at") or record.published_at),
                run_id=model.get("run_id"),
                git_commit=manifest.get("model_git_commit") or manifest.get("git_commit"),
                data_hash=manifest.get("data_hash"),
                model_type=model.get("type") or params.get("train.model"),
                gate=manifest.get("gate"),
                aliases=["production"] if record.production else [],
                released_at=record.published_at,
                github_release=record.tag,
                metrics=metrics,
                params=params,
                params_changed=params_diff(previous, params) if previous and params else {},
                checks_passed=float(checks) if isinstance(checks, int | float) else None,
                deployments=deployments,
            )
        )
        previous = params or previous
    return history


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
