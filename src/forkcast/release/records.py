"""The release line's records: how the image is built from the bento, and the manifest of a release.

The release workflow stays thin: it asks `forkcast release ...` for these and hands them to docker and gh.
An image is identified by its digest from the moment it is pushed; staging and production run that digest,
and the manifest (model, data hash, params, commit, metrics, digest) travels with the GitHub Release.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from forkcast import atomic, paths

RELEASE_DIR = paths.OUTPUTS / "release"
MANIFEST_JSON = RELEASE_DIR / "manifest.json"
MANIFEST_MD = RELEASE_DIR / "manifest.md"
IMAGE_ARGS = RELEASE_DIR / "image.args"
LABEL_PREFIX = "dev.forkcast."

_DOMAIN = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])(?:\.(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9]))*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"  # the OCI distribution grammar for a path component
_REPOSITORY = re.compile(rf"{_DOMAIN}(?:/{_COMPONENT})+")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class ReleaseError(Exception):
    """A release input is missing or malformed (no build record, bad image name or digest)."""


def image_repository(name: str) -> str:
    """`ghcr.io/Owner/Repo` as registries accept it: lower case, checked."""
    repository = name.strip().lower()
    if not _REPOSITORY.fullmatch(repository):
        raise ReleaseError(f"'{name}' is not an image repository like ghcr.io/owner/name")
    return repository


def check_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ReleaseError(f"'{digest}' is not an image digest (sha256: and 64 hex digits)")
    return digest


def read_build_record(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ReleaseError(f"no build record at {path}: run `forkcast build` first")
    record: dict[str, Any] = atomic.read_json(path)
    return record


def release_name(record: dict[str, Any]) -> str:
    """`forkcast-v5-ae0efe4d89c9`: the bento's version, which names the model and digests its contents."""
    return f"forkcast-{record['bento'].split(':', 1)[1]}"


@dataclass(frozen=True)
class ImagePlan:
    """The inputs of `docker buildx build`: the bento directory is the context, its Dockerfile builds it."""

    context: Path
    dockerfile: Path
    tags: tuple[str, ...]
    labels: dict[str, str]

    def buildx_args(self) -> list[str]:
        args = ["--file", str(self.dockerfile)]
        for tag in self.tags:
            args += ["--tag", tag]
        for key, value in sorted(self.labels.items()):
            args += ["--label", f"{key}={value}"]
        return [*args, str(self.context)]


def image_labels(record: dict[str, Any], *, source: str, revision: str) -> dict[str, str]:
    """OCI labels for registries and scanners, and the lineage under `dev.forkcast.*` for people."""
    lineage = record["lineage"]
    dataset = record.get("labels", {}).get("dataset")
    forecasts = f"Forecasts of {dataset}" if dataset else "Forecasts"
    labels = {
        "org.opencontainers.image.title": "forkcast",
        "org.opencontainers.image.description": f"{forecasts} (BentoML service built by Forkcast)",
        "org.opencontainers.image.source": source,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.version": record["bento"].split(":", 1)[1],
        f"{LABEL_PREFIX}bento": record["bento"],
        f"{LABEL_PREFIX}model": record["model"],
    }
    for key in ("model_name", "model_version", "run_id", "data_hash", "git_commit", "trained_at", "gate"):
        labels[f"{LABEL_PREFIX}{key}"] = str(lineage.get(key) or "unknown")
    return labels


def image_context(bento_tag: str, directory: Path = RELEASE_DIR / "image-context") -> Path:
    """The build context `bentoml containerize` would use: the bento, its models and BentoML's final Dockerfile.

    A bento in the store holds no copy of its models (they stay in the model store), so its directory alone
    would build an image that cannot load its model.
    """
    import bentoml

    bento = bentoml.bentos.get(bento_tag)
    directory.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".image-context-", dir=directory.parent))
    try:
        context = scratch / "context"
        shutil.copytree(bento.path, context)
        for info in bento.info.all_models:
            model = bentoml.models.get(info.tag)
            target = context / "models" / model.tag.name / str(model.tag.version)
            shutil.copytree(model.path, target)
            (target.parent / "latest").write_text(str(model.tag.version))
        bentoml.container.get_containerfile(bento_tag, output_path=str(context / "env" / "docker" / "Dockerfile"))
        shutil.rmtree(directory, ignore_errors=True)
        context.rename(directory)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


def plan_image(record: dict[str, Any], context: Path, repository: str, *, source: str, revision: str) -> ImagePlan:
    """How to build the image from `context` (see `image_context`) for `repository`."""
    dockerfile = context / "env" / "docker" / "Dockerfile"
    if not dockerfile.exists() or not (context / "bento.yaml").exists():
        raise ReleaseError(f"{dockerfile} not found: {context} is not a bento's image context")
    version = record["bento"].split(":", 1)[1]
    return ImagePlan(
        context=context,
        dockerfile=dockerfile,
        tags=(f"{image_repository(repository)}:{version}",),
        labels=image_labels(record, source=source, revision=revision),
    )


def manifest(
    record: dict[str, Any],
    params_file: Path,
    *,
    image: str | None,
    digest: str | None,
    commit: str,
    run_url: str | None = None,
    approved_by: str | None = None,
) -> dict[str, Any]:
    """Everything a reviewer or a rollback needs to know about one release, in one record."""
    lineage = record["lineage"]
    image_ref = None
    if image or digest:
        if not (image and digest):
            raise ReleaseError("give both the image repository and its digest, or neither (a bento-only release)")
        image_ref = f"{image_repository(image)}@{check_digest(digest)}"
    return {
        "release": release_name(record),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "image": image_ref,
        "digest": digest,
        "bento": record["bento"],
        "model": {
            "name": lineage.get("model_name"),
            "version": lineage.get("model_version"),
            "run_id": lineage.get("run_id"),
            "trained_at": lineage.get("trained_at"),
            "type": lineage.get("model_type"),
            "bento_model": record["model"],
        },
        "data_hash": lineage.get("data_hash"),
        "git_commit": commit,
        "model_git_commit": lineage.get("git_commit"),
        "metrics": lineage.get("metrics", {}),
        "checks_passed": lineage.get("checks_passed"),
        "gate": lineage.get("gate"),
        "params": yaml.safe_load(params_file.read_text()),
        "workflow_run": run_url,
        "approved_by": approved_by,
    }


def manifest_markdown(release: dict[str, Any]) -> str:
    model = release["model"]
    metrics = release["metrics"] or {}
    rows = [
        ("image", f"`{release['image']}`" if release["image"] else "none (bento only)"),
        ("bento", f"`{release['bento']}`"),
        ("model", f"{model['name']} v{model['version']}, run `{model['run_id']}`, trained {model['trained_at']}"),
        ("data hash", f"`{release['data_hash']}`"),
        ("commit", f"`{release['git_commit']}`"),
        ("quality gate", str(release["gate"])),
        ("test metrics", ", ".join(f"{k[len('test_') :]} {v}" for k, v in metrics.items() if k.startswith("test_"))),
    ]
    backtest = backtest_spread(metrics)
    if backtest:
        rows.append(("backtest (mean ± std over the folds)", backtest))
    if release.get("checks_passed") is not None:
        rows.append(("data checks passed", f"{release['checks_passed']:.1%}"))
    if release["workflow_run"]:
        rows.append(("workflow run", release["workflow_run"]))
    if release.get("approved_by"):
        rows.append(("production approved by", ", ".join(f"@{login}" for login in release["approved_by"].split(", "))))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (
        f"# Release {release['release']}\n\n| | |\n| --- | --- |\n{table}\n\n"
        "Roll back to this release: run the **Rollback** workflow with this release's tag; "
        "it deploys this digest through staging and the production approval, without rebuilding.\n"
    )


def backtest_spread(metrics: dict[str, Any]) -> str:
    """`rmse 43.8 ± 17.8, mae 29.1 ± 10.6` from the `backtest_model_<name>_mean|std` metrics."""
    names = [key[len("backtest_model_") : -len("_mean")] for key in metrics if key.startswith("backtest_model_")
             and key.endswith("_mean")]  # fmt: skip
    shown = []
    for name in names:
        mean, std = metrics.get(f"backtest_model_{name}_mean"), metrics.get(f"backtest_model_{name}_std")
        shown.append(f"{name} {mean:.4g} ± {std:.4g}" if std is not None else f"{name} {mean:.4g}")
    return ", ".join(shown)


def write_manifest(release: dict[str, Any], directory: Path = RELEASE_DIR) -> Path:
    atomic.write_json(directory / MANIFEST_JSON.name, release)
    atomic.write_text(directory / MANIFEST_MD.name, manifest_markdown(release))
    return directory / MANIFEST_JSON.name


def read_manifest(path: Path) -> dict[str, Any]:
    """A release manifest, checked enough that a rollback deploys exactly what it names."""
    if not path.exists():
        raise ReleaseError(f"no release manifest at {path}")
    release: dict[str, Any] = atomic.read_json(path)
    model = release.get("model")
    missing = [key for key in ("release", "bento", "image", "digest", "model") if key not in release]
    missing += [f"model.{key}" for key in ("bento_model", "version") if not isinstance(model, dict) or key not in model]
    if missing:
        raise ReleaseError(f"{path} is not a release manifest: it lacks {', '.join(missing)}")
    if release["digest"] is not None:
        check_digest(release["digest"])
        if not str(release["image"]).endswith(f"@{release['digest']}"):
            raise ReleaseError(f"{path}: the image {release['image']} is not the digest {release['digest']}")
    return release


def build_outputs(record: dict[str, Any]) -> dict[str, Any]:
    """What the release jobs need to know of a fresh build."""
    return {
        "release": release_name(record),
        "bento": record["bento"],
        "model": record["model"],
        "model_version": record["lineage"].get("model_version"),
    }


def manifest_outputs(release: dict[str, Any]) -> dict[str, Any]:
    """What the release jobs need to know of an earlier release (a rollback)."""
    return {
        "release": release["release"],
        "bento": release["bento"],
        "model": release["model"]["bento_model"],
        "model_version": release["model"]["version"],
        "image": release["image"],
        "digest": release["digest"],
    }


def pushed_image(metadata_file: Path, repository: str) -> dict[str, Any]:
    """The digest `docker buildx build --push --metadata-file` recorded, as `image=repository@digest`."""
    if not metadata_file.exists():
        raise ReleaseError(f"no build metadata at {metadata_file}: did `docker buildx build --push` run?")
    digest = atomic.read_json(metadata_file).get("containerimage.digest")
    if not digest:
        raise ReleaseError(f"{metadata_file} records no containerimage.digest: was the image pushed?")
    return {"image": f"{image_repository(repository)}@{check_digest(digest)}", "digest": digest}


def step_outputs(values: dict[str, Any]) -> str:
    """`key=value` lines for `$GITHUB_OUTPUT`; a value with a newline would forge other outputs."""
    lines = []
    for key, value in values.items():
        text = "" if value is None else str(value)
        if "\n" in text or "\r" in text:
            raise ReleaseError(f"output {key} holds a line break")
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"
