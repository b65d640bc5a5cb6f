"""`forkcast history --repo`: the GitHub Releases registry as the history of a fork without an MLflow server, and
the deployments record (`forkcast release deployment`) that the release workflow keeps with each release: staging,
production with who approved it, and every rollback to it. Against the local fake of GitHub's API, with two models
trained on the real data."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from forkcast.cli import main
from forkcast.config import Params
from forkcast.data.prepare import Splits
from forkcast.model.metrics import regression_metrics
from forkcast.model.train import TrainedModel, train
from forkcast.release import records

from ..conftest import ROOT
from ..model.test_registry import with_max_iter
from .test_github import REPO, FakeGitHub, fake  # noqa: F401 - the fake GitHub fixture

pytestmark = pytest.mark.bikes

RUN_URL = f"https://github.com/{REPO}/actions/runs/"


def manifest_of(model: TrainedModel, splits: Splits, params: Params, tag: str, directory: Path, **extra: Any) -> bytes:
    """The manifest the release workflow publishes (`forkcast release manifest`) for `model`, released as `tag`,
    with the params.yaml it was trained with."""
    target = params.dataset.target
    predicted = model.pipeline.predict(splits.test[model.metadata["features"]])
    metrics = {f"test_{name}": value for name, value in regression_metrics(splits.test[target], predicted).items()}
    version = tag.split("-")[1]
    lineage = {
        "model_name": "forkcast-demand", "model_version": version.removeprefix("v"), "run_id": None,
        "data_hash": model.metadata["data_hash"], "git_commit": "c" * 40, "trained_at": model.metadata["trained_at"],
        "model_type": model.metadata["model_type"], "checks_passed": 1.0, "gate": "eligible",
        "metrics": {**metrics, "backtest_model_rmse_mean": metrics["test_rmse"] * 0.9, "backtest_model_rmse_std": 4.2},
    }  # fmt: skip
    record = {
        "bento": f"forkcast:{tag.removeprefix('forkcast-')}",
        "model": f"forkcast-demand:{version}",
        "lineage": lineage,
    }
    params_file = directory / f"{tag}.params.yaml"
    max_iter = params.train.hist_gradient_boosting.max_iter
    params_file.write_text(re.sub(r"max_iter: \d+", f"max_iter: {max_iter}", (ROOT / "params.yaml").read_text()))
    digest = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
    manifest = records.manifest(
        record, params_file, image=f"ghcr.io/{REPO}", digest=digest, commit="d" * 40, run_url=extra.get("run_url"),
        approved_by=extra.get("approved_by"),
    )  # fmt: skip
    return json.dumps(manifest).encode()


def deploy(environment: str, tag: str, run_id: int, output: Path, *extra: str) -> None:
    """What the release workflow's record steps run after a deployment; the step outputs they print."""
    args = [
        "release", "deployment", "--environment", environment, "--target", "kubernetes", "--repo", REPO,
        "--image", f"ghcr.io/{REPO}@sha256:{hashlib.sha256(tag.encode()).hexdigest()}",
        "--bento", f"forkcast:{tag.removeprefix('forkcast-')}", "--model-version", tag.split("-")[1][1:],
        "--url", f"https://{environment}.forkcast.example.com", "--run-url", f"{RUN_URL}{run_id}",
        "--output", str(output), *extra,
    ]  # fmt: skip
    assert main(args) == 0


def outputs(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def release_through_staging_and_production(
    capsys: pytest.CaptureFixture[str], tag: str, run_id: int, directory: Path
) -> tuple[bytes, str | None]:
    """The staging job's record, then the production job's (it reads who approved the run); the deployments record
    and the approver the release is published with."""
    record = directory / f"{tag}.jsonl"
    deploy("staging", tag, run_id, directory / "staging.jsonl")
    staging = outputs(capsys.readouterr().out)["deployment"]
    deploy("production", tag, run_id, record, "--approved-in-run", str(run_id), "--release", tag, "--also", staging)
    approved_by = outputs(capsys.readouterr().out)["approved_by"] or None
    return record.read_bytes(), approved_by


def test_history_reads_the_releases_their_approvers_and_a_rollback_from_github(
    fake: FakeGitHub,  # noqa: F811
    trained: TrainedModel,
    splits: Splits,
    params: Params,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["history", "--repo", REPO]) == 3
    assert "no Forkcast release of octocat/forkcast carries a manifest yet" in capsys.readouterr().err

    # January: the first model, approved by alice (bob had rejected an earlier attempt in the same run).
    first_tag, second_tag = "forkcast-v1-aaaaaaaaaaaa", "forkcast-v2-bbbbbbbbbbbb"
    fake.review(101, "bob", "production", state="rejected")
    fake.review(101, "alice", "production")
    deployments, approved_by = release_through_staging_and_production(capsys, first_tag, 101, tmp_path)
    assert approved_by == "alice"
    manifest = manifest_of(trained, splits, params, first_tag, tmp_path, approved_by=approved_by, run_url=RUN_URL)
    fake.add_release(first_tag, "2026-01-05T10:00:00Z", {"manifest.json": manifest, "deployments.jsonl": deployments})

    # February: a model with fewer boosting rounds, approved by carol.
    fewer = with_max_iter(params, 30)
    second = train(fewer, splits.as_dict(), fewer.dataset.inputs(), data_hash=trained.metadata["data_hash"])
    fake.review(202, "carol", "production")
    deployments, approved_by = release_through_staging_and_production(capsys, second_tag, 202, tmp_path)
    manifest = manifest_of(second, splits, fewer, second_tag, tmp_path, approved_by=approved_by)
    fake.add_release(second_tag, "2026-02-05T10:00:00Z", {"manifest.json": manifest, "deployments.jsonl": deployments})
    fake.latest = second_tag

    # March: the Rollback workflow redeploys January's release, approved by alice; its record grows.
    fake.review(303, "alice", "production")
    rolled_back, _ = release_through_staging_and_production(capsys, first_tag, 303, tmp_path)
    fake.replace_asset(first_tag, "deployments.jsonl", rolled_back)
    fake.latest = first_tag
    fake.add_release("forkcast-v3-cccccccccccc", "2026-03-20T10:00:00Z", {"manifest.json": b"not json"})

    assert main(["history", "--repo", REPO, "--json"]) == 0
    captured = capsys.readouterr()
    assert "forkcast-v3-cccccccccccc: left out, its manifest.json or deployments.jsonl cannot be read" in captured.err
    history = json.loads(captured.out)
    assert [entry["github_release"] for entry in history] == [first_tag, second_tag]
    january, february = history
    assert january["aliases"] == ["production"]  # the rollback made it the latest release again
    assert february["aliases"] == []
    assert [(d["environment"], d["approved_by"]) for d in january["deployments"]] == [
        ("staging", None), ("production", "alice"), ("staging", None), ("production", "alice"),
    ]  # fmt: skip
    assert [d["workflow_run"] for d in january["deployments"]] == [f"{RUN_URL}{run}" for run in (101, 101, 303, 303)]
    assert [(d["environment"], d["approved_by"]) for d in february["deployments"]] == [
        ("staging", None), ("production", "carol"),
    ]  # fmt: skip
    assert all(d["image"].endswith(hashlib.sha256(first_tag.encode()).hexdigest()) for d in january["deployments"])
    assert february["params_changed"] == {"train.hist_gradient_boosting.max_iter": ["100", "30"]}
    assert january["data_hash"] == trained.metadata["data_hash"]
    assert january["model_type"] == "hist_gradient_boosting"
    assert january["checks_passed"] == 1.0
    assert january["metrics"]["test_rmse"] < february["metrics"]["test_rmse"]  # 100 rounds fit better than 30

    assert main(["history", "--repo", REPO]) == 0
    table = capsys.readouterr().out
    for shown in (first_tag, second_tag, "by alice", "by carol"):
        assert shown in table
    assert "train.hist_gradient_boosting.max_iter 100 → 30" in table
    assert "run the Rollback workflow with its tag" in table


def test_a_release_from_before_deployments_were_recorded_shows_its_manifest_s_production(
    fake: FakeGitHub,  # noqa: F811
    trained: TrainedModel,
    splits: Splits,
    params: Params,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = "forkcast-v4-dddddddddddd"
    fake.add_release(
        tag, "2026-04-01T08:00:00Z", {"manifest.json": manifest_of(trained, splits, params, tag, tmp_path)}
    )
    fake.add_release("notes-2026", "2026-04-02T08:00:00Z", {"notes.md": b"something else"})
    fake.latest = "notes-2026"
    assert main(["history", "--repo", REPO, "--json"]) == 0
    captured = capsys.readouterr()
    assert "latest release (notes-2026) carries no manifest: production is taken to be" in captured.err
    (entry,) = json.loads(captured.out)
    assert entry["aliases"] == ["production"]
    assert [(d["environment"], d["at"], d["approved_by"]) for d in entry["deployments"]] == [
        ("production", "2026-04-01T08:00:00Z", None)
    ]


def test_a_deployment_is_recorded_even_when_github_will_not_say_who_approved_it(
    fake: FakeGitHub,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A token without `actions: read` cannot read the run's reviews: the deployment already serves, so it is
    recorded without the approver, the earlier record kept, and the job warned, not failed."""
    tag = "forkcast-v5-eeeeeeeeeeee"
    earlier = {"at": "2026-05-01T08:00:00+00:00", "environment": "production", "target": "kubernetes",
               "model_version": "5", "approved_by": "alice"}  # fmt: skip
    fake.add_release(tag, "2026-05-01T08:00:00Z", {"deployments.jsonl": json.dumps(earlier).encode() + b"\n"})
    fake.refuse_reviews = True
    record = tmp_path / "deployments.jsonl"
    deploy("production", tag, 505, record, "--approved-in-run", "505", "--release", tag)
    captured = capsys.readouterr()
    assert "::warning::who approved production is not recorded" in captured.err
    assert "Resource not accessible by integration" in captured.err
    assert "needs `permissions: actions: read`" in captured.err
    assert outputs(captured.out)["approved_by"] == ""
    assert outputs(captured.out)["recorded"] == "true"
    kept, added = (json.loads(line) for line in record.read_text().splitlines())
    assert kept["approved_by"] == "alice"  # the record so far, kept
    assert added["approved_by"] is None

    fake.refuse_reviews = False  # no review for this environment in the run: said, not invented
    deploy("production", tag, 506, record, "--approved-in-run", "506")
    assert "::warning::no approval of production is recorded in run 506" in capsys.readouterr().err


def test_a_record_that_cannot_be_read_is_never_replaced(
    fake: FakeGitHub,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The workflow uploads the file with --clobber: a record written without the release's earlier lines would
    erase them, so none is written and the step says `recorded=false`."""
    tag = "forkcast-v6-ffffffffffff"
    fake.add_release(tag, "2026-06-01T08:00:00Z", {"deployments.jsonl": b"{}\n"})
    fake.assets.clear()  # the asset is listed but cannot be downloaded
    record = tmp_path / "deployments.jsonl"
    record.write_text("a stale file from an earlier step\n")
    deploy("production", tag, 606, record, "--release", tag)
    captured = capsys.readouterr()
    assert f"::warning::the deployments record of {tag} cannot be read" in captured.err
    assert outputs(captured.out)["recorded"] == "false"
    assert not record.exists()


def test_a_rollback_extends_the_record_once_per_deployment_and_keeps_an_older_release_s_first_one(
    fake: FakeGitHub,  # noqa: F811
    trained: TrainedModel,
    splits: Splits,
    params: Params,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A release published before releases kept their record stands for one production deployment: a rollback to
    it starts its record with that one. A re-run of the production job hands staging's record over again: kept
    once. `--last 1` still shows production after a rollback to an older release."""
    old, newer = "forkcast-v7-777777777777", "forkcast-v8-888888888888"
    manifest = manifest_of(trained, splits, params, old, tmp_path, approved_by="dana")
    fake.add_release(old, "2026-07-01T08:00:00Z", {"manifest.json": manifest})
    fake.add_release(newer, "2026-08-01T08:00:00Z", {"manifest.json": manifest_of(trained, splits, params, newer,
                                                                                   tmp_path)})  # fmt: skip
    fake.review(707, "erin", "production")
    record = tmp_path / "deployments.jsonl"
    deploy("staging", old, 707, tmp_path / "staging.jsonl")
    staging = outputs(capsys.readouterr().out)["deployment"]
    for attempt in (1, 2):  # the production job, then a re-run of it (the workflow names the attempt)
        deploy("production", old, 707, record, "--approved-in-run", "707", "--release", old, "--also", staging,
               "--run-url", f"{RUN_URL}707/attempts/{attempt}")  # fmt: skip
        fake.replace_asset(old, "deployments.jsonl", record.read_bytes())
    fake.latest = old
    capsys.readouterr()
    assert main(["history", "--repo", REPO, "--json", "--last", "1"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["github_release"] == old
    assert [(d["environment"], d["approved_by"]) for d in entry["deployments"]] == [
        ("production", "dana"), ("staging", None), ("production", "erin"), ("production", "erin"),
    ]  # fmt: skip
    assert entry["deployments"][0]["at"] == "2026-07-01T08:00:00Z"  # when it was published


def test_a_release_whose_record_cannot_be_read_is_left_out_and_said(
    fake: FakeGitHub,  # noqa: F811
    trained: TrainedModel,
    splits: Splits,
    params: Params,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, missing = "forkcast-v9-999999999999", "forkcast-v10-101010101010"
    kept = {"at": "2026-09-01T08:00:00+00:00", "environment": "production", "target": "self-hosted"}
    record = b"\n".join([b'{"at": "2026-08-31T', json.dumps({**kept, "url": 3}).encode(), json.dumps(kept).encode()])
    manifest = manifest_of(trained, splits, params, good, tmp_path)
    fake.add_release(good, "2026-09-01T08:00:00Z", {"manifest.json": manifest, "deployments.jsonl": record})
    fake.add_release(missing, "2026-10-01T08:00:00Z", {"manifest.json": b"{}", "deployments.jsonl": b""})
    broken = fake.releases[0]["assets"][1]["id"]
    del fake.assets[broken]  # listed, but GitHub answers 404
    assert main(["history", "--repo", REPO, "--json"]) == 0
    captured = capsys.readouterr()
    assert f"{missing}: left out, its manifest.json or deployments.jsonl cannot be read" in captured.err
    (entry,) = json.loads(captured.out)
    assert entry["github_release"] == good
    # A torn line and one with a value of the wrong type are skipped; the well-formed one is shown.
    assert [(d["at"], d["target"]) for d in entry["deployments"]] == [(kept["at"], "self-hosted")]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--environment", "qa"], "--environment is staging or production, not 'qa'"),
        (["--environment", "production", "--also", "{not json"], "--also is not a deployment record"),
        (["--environment", "production", "--also", '{"at": "x"}'], "--also is not a deployment record"),
        (
            ["--environment", "production", "--also", '{"at": 5, "environment": ["x"], "target": null}'],
            "a deployment record needs `at` as text, not 5",
        ),
        (
            ["--environment", "production", "--also", '{"at": "x", "environment": "y", "target": "z", "url": 3}'],
            "`url` of a deployment record is text or null, not 3",
        ),
    ],
)
def test_bad_input_to_the_deployment_record_writes_nothing(
    fake: FakeGitHub,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    message: str,
) -> None:
    record = tmp_path / "deployments.jsonl"
    assert main(["release", "deployment", *arguments, "--output", str(record)]) == 2
    assert message in capsys.readouterr().err
    assert not record.exists()
