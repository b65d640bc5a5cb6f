"""Where a model came from: git commit, data hash (from data.dvc), stage hashes (from dvc.lock)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

# Files the pipeline itself rewrites: their changes say nothing about the code that trained the model
# (the data has its own hash).
PIPELINE_WRITES = ("dvc.lock", "outputs", "data.dvc", "feed.dvc")

LIBRARIES = ("scikit-learn", "pandas", "numpy", "pandera", "dvc", "mlflow", "skl2onnx", "onnxruntime")


def git_commit() -> str | None:
    """HEAD's commit, with `-dirty` when tracked files other than the pipeline's own outputs changed."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                *(f":(exclude){path}" for path in PIPELINE_WRITES),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if status else commit


def data_hash(dvc_file: Path) -> str | None:
    """The md5 DVC recorded for the data (a directory hash ends in `.dir`)."""
    try:
        spec = yaml.safe_load(dvc_file.read_text())
        return str(spec["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return None


def stage_hashes(lock_file: Path) -> dict[str, str]:
    """A hash per stage in dvc.lock: the md5 of its command, deps, params and outs."""
    try:
        stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages") or {}
    except (OSError, AttributeError, yaml.YAMLError):
        return {}
    return {
        name: hashlib.md5(json.dumps(entry, sort_keys=True, default=str).encode()).hexdigest()
        for name, entry in stages.items()
    }


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def lineage(dvc_file: Path, lock_file: Path) -> dict[str, Any]:
    return {
        "git_commit": git_commit(),
        "data_hash": data_hash(dvc_file),
        "stage_hashes": stage_hashes(lock_file),
    }
