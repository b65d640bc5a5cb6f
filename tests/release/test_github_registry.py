"""GitHub Releases as the registry of a fork without an MLflow server, against the local fake of GitHub's API:
a production release carries the served model; the pipeline seeds its empty local store from the recent releases
and the gate compares with production, as it does locally."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from forkcast.cli import main
from forkcast.config import Params, TrackingParams
from forkcast.data.prepare import Splits
from forkcast.model.refit import refit
from forkcast.model.registry import PRODUCTION, RELEASED_AT
from forkcast.model.train import TrainedModel, save, train
from forkcast.release import github
from forkcast.release.github_registry import (
    MODEL_ASSETS,
    RegistryAssetsError,
    load_pipeline,
    reachable_only_inside,
    seed,
    write_model_assets,
)

from ..conftest import ROOT
from ..model.test_registry import register, with_max_iter
from .test_github import REPO, FakeGitHub, fake  # noqa: F401 - the fake GitHub fixture

pytestmark = pytest.mark.bikes


def release_files(model: TrainedModel, directory: Path) -> dict[str, bytes]:
    """What the release workflow uploads for `model` (`forkcast release model-assets`)."""
    pipeline, onnx, metadata = directory / "model.joblib", directory / "model.onnx", directory / "metadata.json"
    save(model, pipeline, onnx, metadata)
    written = write_model_assets(pipeline, onnx, metadata, directory / "assets")
    return {path.name: path.read_bytes() for path in written}


@pytest.fixture
def local(params: Params, monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return params.model_copy(update={"tracking": TrackingParams(experiment="seeded", registered_model="seeded")})


def test_the_release_assets_load_back_as_the_same_model_without_pickle(
    trained: TrainedModel, splits: Splits, params: Params, tmp_path: Path
) -> None:
    files = release_files(trained, tmp_path)
    assert sorted(files) == sorted(MODEL_ASSETS)
    loaded = load_pipeline(tmp_path / "assets" / "model.skops")
    rows = splits.test[trained.metadata["features"]].head(100)
    np.testing.assert_array_equal(loaded.predict(rows), trained.pipeline.predict(rows))
    with pytest.raises(RegistryAssetsError, match=r"missing .*none/model\.joblib, .*/x: run `dvc repro` first"):
        write_model_assets(tmp_path / "none" / "model.joblib", tmp_path / "model.onnx", tmp_path / "x", tmp_path)


def test_the_pipeline_seeds_the_recent_releases_and_the_gate_compares_with_production(
    fake: FakeGitHub,  # noqa: F811
    trained: TrainedModel,
    splits: Splits,
    local: Params,
    tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    inputs = local.dataset.inputs()
    first = refit(local, splits.as_dict(), inputs, trained, data_hash="first.dir")
    weaker = with_max_iter(local, 45)
    second = refit(weaker, splits.as_dict(), inputs, train(weaker, splits.as_dict(), inputs, None), data_hash=None)
    fake.add_release("forkcast-v1-aaaaaaaaaaaa", "2026-01-05T10:00:00Z", release_files(first, tmp_path / "first"))
    fake.add_release("notes-2026", "2026-01-20T10:00:00Z", {"notes.md": b"not a model"})
    fake.add_release("forkcast-v2-bbbbbbbbbbbb", "2026-02-05T10:00:00Z", release_files(second, tmp_path / "second"))
    fake.add_release("forkcast-v3-cccccccccccc", "2026-03-05T10:00:00Z", {"manifest.json": b"{}"})  # no model
    broken = {**release_files(second, tmp_path / "broken"), "model.skops": b"not a zip"}
    fake.add_release("forkcast-v4-dddddddddddd", "2026-03-20T10:00:00Z", broken)
    fake.latest = "forkcast-v1-aaaaaaaaaaaa"  # rolled back: the first release is production again

    store = tmp_path / ".mlflow"
    with github.client() as gh:
        seeded = seed(gh, REPO, local, local_dir=store, directory=tmp_path / "downloads")
    assert [(s.tag, s.production, s.reused) for s in seeded] == [
        ("forkcast-v1-aaaaaaaaaaaa", True, False),
        ("forkcast-v2-bbbbbbbbbbbb", False, False),
        ("forkcast-v4-dddddddddddd", False, False),
    ]
    assert seeded[2].version is None  # one unreadable release is left out, and says why; it stops nothing
    assert seeded[2].skipped is not None
    assert seeded[2].skipped.startswith("BadZipFile")
    storage = [s for s in fake.seen if s.path.startswith("/storage/")]
    assert len(storage) == 9
    assert all("Authorization" not in s.headers for s in storage)  # the token never leaves the API's host

    client = MlflowClient(f"sqlite:///{(store / 'mlflow.db').resolve()}")
    production = client.get_model_version_by_alias("seeded", PRODUCTION)
    assert production.tags["github_release"] == "forkcast-v1-aaaaaaaaaaaa"
    assert production.tags[RELEASED_AT] == "2026-01-05T10:00:00Z"
    assert production.tags["data_hash"] == "first.dir"

    # A second run seeds again: the same bytes are the same versions.
    with github.client() as gh:
        again = seed(gh, REPO, local, local_dir=store, directory=tmp_path / "downloads")
    assert [(s.version, s.reused) for s in again[:2]] == [(s.version, True) for s in seeded[:2]]

    # The gate: production's own model is unchanged; a much weaker one is refused by production and the baseline.
    same = register(local, trained, splits, tmp_path)
    assert same.version == str(production.version)
    assert same.verdict.unchanged
    weak = with_max_iter(local, 20)
    worse = register(weak, train(weak, splits.as_dict(), inputs, None), splits, tmp_path)
    assert not worse.verdict.eligible
    compared = {c.against: c.passed for c in worse.verdict.comparisons}
    assert compared[f"production v{production.version}"] is False


def test_the_command_says_when_no_release_carries_a_model(
    fake: FakeGitHub,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("params.yaml", "dataset.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fake.add_release("forkcast-v1-aaaaaaaaaaaa", "2026-01-05T10:00:00Z", {"manifest.json": b"{}"})
    assert main(["release", "seed-registry", "--repo", REPO]) == 0
    assert "no release of octocat/forkcast carries a readable model" in capsys.readouterr().out
    assert not (tmp_path / ".mlflow").exists()  # nothing registered, nothing written


def test_a_release_with_a_foreign_type_is_refused_not_loaded(tmp_path: Path) -> None:
    import skops.io

    path = tmp_path / "model.skops"
    skops.io.dump({"model": np.float64(1.0), "hook": Path("/")}, path)
    with pytest.raises(RegistryAssetsError, match="types from outside scikit-learn"):
        load_pipeline(path)


def test_production_is_the_newest_release_with_a_model_when_the_latest_carries_none(
    fake: FakeGitHub,  # noqa: F811
    trained: TrainedModel,
    local: Params,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.add_release("forkcast-v1-aaaaaaaaaaaa", "2026-01-05T10:00:00Z", release_files(trained, tmp_path))
    fake.add_release("docs-2026-02", "2026-02-01T10:00:00Z", {"notes.md": b"a release of something else"})
    fake.latest = "docs-2026-02"  # GitHub makes a newer release latest by default
    lines: list[str] = []
    with github.client() as gh:
        seeded = seed(gh, REPO, local, local_dir=tmp_path / ".mlflow", directory=tmp_path / "d", progress=lines.append)
    assert [(s.tag, s.production) for s in seeded] == [("forkcast-v1-aaaaaaaaaaaa", True)]
    assert any("latest release (docs-2026-02) carries no Forkcast model" in line for line in lines)


def test_the_commit_production_was_released_from_is_read_from_its_manifest(
    fake: FakeGitHub,  # noqa: F811
    tmp_path: Path,
    trained: TrainedModel,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The nightly drift job takes its reference from there: main may hold data no release has used."""
    assert main(["release", "production-commit", "--repo", REPO]) == 3
    assert "no release of octocat/forkcast carries a model yet" in capsys.readouterr().err
    released, newer = "a" * 40, "b" * 40
    for tag, commit, day in (("forkcast-v1-aaaaaaaaaaaa", released, "05"), ("forkcast-v2-bbbbbbbbbbbb", newer, "20")):
        files = release_files(trained, tmp_path / tag)
        files["manifest.json"] = json.dumps({"release": tag, "git_commit": commit}).encode()
        fake.add_release(tag, f"2026-01-{day}T10:00:00Z", files)
    fake.latest = "forkcast-v1-aaaaaaaaaaaa"  # rolled back: production is the older release
    assert main(["release", "production-commit", "--repo", REPO]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == released
    assert "production runs forkcast-v1-aaaaaaaaaaaa" in captured.err
    broken = {**release_files(trained, tmp_path / "v3"), "manifest.json": b'{"git_commit": "main"}'}
    fake.add_release("forkcast-v3-cccccccccccc", "2026-02-01T10:00:00Z", broken)
    fake.latest = "forkcast-v3-cccccccccccc"
    assert main(["release", "production-commit", "--repo", REPO]) == 1
    assert "names no commit (git_commit: 'main')" in capsys.readouterr().err


def test_the_health_probe_finds_production_where_its_last_successful_deployment_recorded_it(
    fake: FakeGitHub,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["release", "production-url", "--repo", REPO]) == 3
    assert "no deployment of octocat/forkcast to production recorded a URL" in capsys.readouterr().err
    fake.add_deployment("production", ("in_progress", ""), ("success", "https://forkcast.example.com"))
    fake.add_deployment("staging", ("success", "https://staging.forkcast.example.com"))
    fake.add_deployment("production", ("in_progress", ""), ("failure", "https://broken.example.com"))
    assert main(["release", "production-url", "--repo", REPO]) == 0
    # The newest production deployment failed: production still serves where the last good one did.
    assert capsys.readouterr().out.strip() == "https://forkcast.example.com"


def test_a_recorded_url_only_the_cluster_or_the_machine_can_reach_is_not_probed_from_github(
    fake: FakeGitHub,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.add_deployment("production", ("success", "http://forkcast.forkcast-production.svc.cluster.local"))
    monkeypatch.setenv("RUNNER_ENVIRONMENT", "github-hosted")
    assert main(["release", "production-url", "--repo", REPO]) == 3
    assert "which a GitHub-hosted runner cannot reach: set FORKCAST_URL" in capsys.readouterr().err
    monkeypatch.setenv("RUNNER_ENVIRONMENT", "self-hosted")  # a runner inside the cluster can
    assert main(["release", "production-url", "--repo", REPO]) == 0
    assert capsys.readouterr().out.strip() == "http://forkcast.forkcast-production.svc.cluster.local"
    for url, inside in (("http://127.0.0.1:3102", True), ("http://localhost:3102", True),
                        ("https://forkcast.example.com", False), ("http://forkcast.prod.svc", True)):  # fmt: skip
        assert reachable_only_inside(url) is inside, url
