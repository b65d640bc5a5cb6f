"""The GitHub Actions workflows, proven without GitHub.

Three real checkers (the workflow schema, actionlint with shellcheck, zizmor) and structural rules
for what the release line promises; then `act` runs the pipeline workflow, and the release workflow
through the staging smoke tests, on this machine, with local stand-ins for the actions it cannot download.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from forkcast.config import Params
from forkcast.data.prepare import build_features, load_raw
from forkcast.model.onnx import columns_of_frame
from forkcast.model.train import TrainedModel
from forkcast.release.github_registry import write_model_assets
from forkcast.serving.inference_log import InferenceLog

from ..conftest import BIN, ROOT, free_port, make_project, run_ok, tool_env
from .test_github import REPO, TOKEN, FakeGitHub, serving

WORKFLOWS = ROOT / ".github" / "workflows"
ACTIONS = ROOT / ".github" / "actions"
STAND_INS = ROOT / "tests" / "workflows" / "stand-ins"
SHA_PIN = re.compile(r"^(?P<action>[\w.-]+/[\w.-]+)@(?P<sha>[0-9a-f]{40})$")
PIPELINE_INPUTS = {"data.dvc", "params.yaml", "dataset.yaml", "bin/**", "src/**", "dvc.yaml", "uv.lock"}

# Every write permission of every job, and why; anything else is read-only.
WRITE_PERMISSIONS = {
    ("pipeline.yml", "pipeline"): {"pull-requests"},  # the one pipeline comment
    ("pipeline.yml", "release"): {"contents", "packages"},  # handed to the release workflow
    ("rollback.yml", "rollback"): {"contents", "packages"},
    ("release.yml", "build"): {"packages"},  # push the image
    ("release.yml", "production"): {"contents", "packages"},  # the GitHub Release; tag the digest
    ("monitor.yml", "drift"): {"issues", "actions"},  # the one drift issue; dispatch retraining
    ("health.yml", "probe"): {"issues"},  # the one health issue
}


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in document:
        document["on"] = document.pop(True)
    return document


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def action_files() -> list[Path]:
    return sorted([*ACTIONS.glob("*/action.yml"), *STAND_INS.glob("*/action.yml")])


def jobs() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path in workflow_files():
        for name, job in load(path)["jobs"].items():
            yield path.name, name, job


def steps_of(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for job in document.get("jobs", {}).values():
        yield from job.get("steps", [])
    yield from document.get("runs", {}).get("steps", [])


def remote_actions() -> set[str]:
    """Every `owner/action@ref` the workflows and composite actions use."""
    found = set()
    for path in [*workflow_files(), *ACTIONS.glob("*/action.yml")]:
        for step in steps_of(load(path)):
            uses = step.get("uses", "")
            if uses and not uses.startswith("./"):
                found.add(uses)
    return found


def tool(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=tool_env(), capture_output=True, text=True, check=False)


# ---- the three checkers, each shown able to fail ---------------------------------------------------


def test_workflows_and_actions_match_githubs_schemas() -> None:
    for schema, files in (("vendor.github-workflows", workflow_files()), ("vendor.github-actions", action_files())):
        result = tool([str(BIN / "check-jsonschema"), "--builtin-schema", schema, *map(str, files)])
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text((WORKFLOWS / "ci.yml").read_text().replace("runs-on:", "run-on:", 1))
    result = tool([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)])
    assert result.returncode != 0


def test_actionlint_with_shellcheck_finds_nothing() -> None:
    assert shutil.which("shellcheck", path=str(BIN)), "shellcheck must be installed for actionlint's script checks"
    result = tool([str(BIN / "jactionlint")])
    assert result.returncode == 0, result.stdout + result.stderr
    scripts = tool([str(BIN / "shellcheck"), *map(str, sorted((ROOT / "deploy" / "targets").glob("*.sh")))])
    assert scripts.returncode == 0, scripts.stdout


def test_actionlint_catches_a_bad_expression_and_a_shell_bug(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / ".github", repo / ".github")
    release = repo / ".github" / "workflows" / "release.yml"
    text = release.read_text()
    text = text.replace("needs.build.outputs.image }}", "needs.build.outputs.imag }}", 1)
    text = text.replace(
        'cat outputs/smoke/*/report.md >> "$GITHUB_STEP_SUMMARY"', "cat $REPORT >> $GITHUB_STEP_SUMMARY"
    )
    release.write_text(text)
    result = tool([str(BIN / "jactionlint"), str(release)], cwd=repo)
    assert result.returncode != 0
    assert "imag" in result.stdout
    assert "shellcheck" in result.stdout


def test_zizmor_finds_nothing_of_medium_severity_or_above() -> None:
    result = tool([str(BIN / "zizmor"), "--offline", "--min-severity", "medium", "--strict-collection", ".github"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_catches_template_injection_and_an_unpinned_action(tmp_path: Path) -> None:
    github = tmp_path / ".github"
    shutil.copytree(ROOT / ".github", github)
    pipeline = github / "workflows" / "pipeline.yml"
    text = pipeline.read_text().replace(
        'forkcast pr-report --base "origin/$BASE_REF"', 'forkcast pr-report --base "origin/${{ github.head_ref }}"'
    )
    text = re.sub(r"actions/upload-artifact@[0-9a-f]{40}", "actions/upload-artifact@v4", text)
    pipeline.write_text(text)
    result = tool([str(BIN / "zizmor"), "--offline", "--min-severity", "medium", str(github)])
    assert result.returncode != 0
    assert "template-injection" in result.stdout
    assert "unpinned-uses" in result.stdout


# ---- what the release line promises ----------------------------------------------------------------


def test_production_waits_for_approval_after_stagings_smoke_tests() -> None:
    release = load(WORKFLOWS / "release.yml")["jobs"]
    for environment in ("staging", "production"):
        # The environment's URL on GitHub is where the deploy step says the release serves.
        assert release[environment]["environment"] == {"name": environment, "url": "${{ steps.deploy.outputs.url }}"}
    assert "staging" in release["production"]["needs"]
    staging_steps = [step.get("name") for step in release["staging"]["steps"]]
    assert staging_steps.index("Smoke tests") > staging_steps.index("Deploy")
    for environment, name in (("staging", "Smoke tests"), ("production", "Post-deploy smoke tests")):
        smoke = next(step for step in release[environment]["steps"] if step.get("name") == name)
        # A failing smoke test fails the job, so production never starts; it is skipped only when the target
        # smoke-tested the release itself (and failed the deploy step, after rolling back, if it did not pass).
        assert smoke["if"] == "${{ steps.deploy.outputs.smoked != 'true' }}"
        assert "continue-on-error" not in smoke
        assert "FORKCAST_API_TOKEN" in smoke["env"]


def test_production_deploys_the_digest_the_build_job_pushed_and_never_rebuilds() -> None:
    release = load(WORKFLOWS / "release.yml")["jobs"]
    for environment in ("staging", "production"):
        job = release[environment]
        deploy = next(step for step in job["steps"] if step.get("uses") == "./.github/actions/deploy")
        assert deploy["with"]["image"] == "${{ needs.build.outputs.image }}"
        assert deploy["with"]["bento"] == "${{ needs.build.outputs.bento }}"
        scripts = " ".join(step.get("run", "") for step in job["steps"])
        for rebuild in (r"forkcast build\b", r"bentoml build\b", r"buildx build\b", r"docker build\b"):
            assert not re.search(rebuild, scripts), f"{environment} rebuilds: {rebuild}"
    build_scripts = " ".join(step.get("run", "") for step in release["build"]["steps"])
    assert "docker buildx build --push" in build_scripts
    assert "steps.pushed.outputs.image" in release["build"]["outputs"]["image"]
    promote = " ".join(step.get("run", "") for step in release["production"]["steps"])
    assert 'imagetools create --tag "${IMAGE%@*}:production" "$IMAGE"' in promote  # a tag on the same digest
    assert release["production"]["needs"] == ["build", "staging", "approval", "tests"]


def test_each_release_keeps_its_deployments_and_who_approved_production() -> None:
    """`forkcast history --repo` reads them back: staging's record travels to production as a job output, production
    adds who approved the run (its review history needs `actions: read`), and the release carries the record; a
    rollback extends the record of the release it restores."""
    release = load(WORKFLOWS / "release.yml")["jobs"]
    staging = {step.get("name"): step for step in release["staging"]["steps"]}
    assert "forkcast release deployment --environment staging" in staging["Record the deployment"]["run"]
    assert release["staging"]["outputs"]["deployment"] == "${{ steps.recorded.outputs.deployment }}"
    production = release["production"]
    assert production["permissions"]["actions"] == "read"
    names = [step.get("name") for step in production["steps"]]
    steps = {step.get("name"): step for step in production["steps"]}
    record = steps["Record who approved it and where it serves"]
    assert (
        names.index("Post-deploy smoke tests")
        < names.index(record["name"])
        < names.index("Publish the release manifest")
    )
    for argument in ('--approved-in-run "$GITHUB_RUN_ID"', '--release "$RELEASE"', '--also "$STAGING"'):
        assert argument in record["run"]
    assert record["env"]["STAGING"] == "${{ needs.staging.outputs.deployment }}"
    publish = steps["Publish the release manifest"]
    assert publish["env"]["APPROVED_BY"] == "${{ steps.recorded.outputs.approved_by }}"
    assert '--approved-by "$APPROVED_BY"' in publish["run"]
    # The record goes up with a new release's files, and replaces a rolled-back release's own, only when the
    # record step wrote it (it writes none when the release's record could not be read: --clobber would erase it).
    assert "record=outputs/release/deployments.jsonl" in publish["run"]
    assert 'if [ -f "$record" ]; then files+=("$record"); fi' in publish["run"]
    assert 'gh release upload "$RELEASE" --repo "$GITHUB_REPOSITORY" --clobber "$record"' in publish["run"]
    # A record that fails must not keep a release that serves from being published.
    assert staging["Record the deployment"]["continue-on-error"] is True
    assert record["continue-on-error"] is True
    for step in (staging["Record the deployment"], record):  # each attempt of a re-run is its own deployment
        assert step["env"]["RUN_URL"].endswith("/attempts/${{ github.run_attempt }}")
    for workflow, job in (("pipeline.yml", "release"), ("rollback.yml", "rollback")):
        # A called workflow's jobs get no permission their caller did not grant.
        assert load(WORKFLOWS / workflow)["jobs"][job]["permissions"]["actions"] == "read", workflow


def test_the_pipeline_runs_on_changes_to_data_params_and_code() -> None:
    triggers = load(WORKFLOWS / "pipeline.yml")["on"]
    assert triggers["push"]["branches"] == ["main"]
    for event in ("push", "pull_request"):
        assert set(triggers[event]["paths"]) >= PIPELINE_INPUTS
    assert "workflow_dispatch" in triggers
    release_job = load(WORKFLOWS / "pipeline.yml")["jobs"]["release"]
    assert release_job["uses"] == "./.github/workflows/release.yml"
    assert "needs.pipeline.outputs.eligible == 'true'" in release_job["if"]
    assert "github.event_name != 'pull_request'" in release_job["if"]


def test_permissions_are_read_only_except_where_a_job_needs_more() -> None:
    for path in workflow_files():
        assert load(path)["permissions"] == {"contents": "read"}, path.name
    for workflow, name, job in jobs():
        permissions = job.get("permissions", {})
        writes = {scope for scope, level in permissions.items() if level == "write"}
        assert writes == WRITE_PERMISSIONS.get((workflow, name), set()), f"{workflow}:{name}"


def test_every_action_is_pinned_to_a_commit_and_has_a_stand_in() -> None:
    stand_ins = {path.name for path in STAND_INS.iterdir() if path.is_dir()}
    for uses in remote_actions():
        match = SHA_PIN.match(uses)
        assert match, f"{uses} is not pinned to a commit SHA"
        name = match["action"].split("/")[1]
        assert name == "checkout" or name in stand_ins, f"{uses} has no stand-in under {STAND_INS}"
    for path in [*workflow_files(), *ACTIONS.glob("*/action.yml")]:
        for line in path.read_text().splitlines():
            if re.search(r"uses: [\w.-]+/[\w.-]+@", line):
                assert re.search(r"@[0-9a-f]{40} # v\d+\.\d+\.\d+$", line), f"{path.name}: {line.strip()}"


# The first release of each action that runs on Node 24 (its action.yml `runs.using`); GitHub is moving its
# runners off Node 20. Read from each action's repository at its tags.
NODE24_RELEASES = {
    "actions/checkout": (5, 0), "actions/setup-python": (6, 0), "actions/upload-artifact": (6, 0),
    "actions/download-artifact": (7, 0), "actions/cache": (5, 0), "helm/kind-action": (1, 13),
}  # fmt: skip


def test_every_action_runs_on_node_24() -> None:
    for path in [*workflow_files(), *ACTIONS.glob("*/action.yml")]:
        for found in re.finditer(r"uses: ([\w.-]+/[\w.-]+)@[0-9a-f]{40} # v(\d+)\.(\d+)\.", path.read_text()):
            action, release = found[1], (int(found[2]), int(found[3]))
            assert action in NODE24_RELEASES, f"{path.name}: {action} (add its first Node 24 release)"
            assert release >= NODE24_RELEASES[action], f"{path.name}: {action} v{release} runs on Node 20 or older"


def test_hygiene_rules_hold_in_every_job() -> None:
    for workflow, name, job in jobs():
        where = f"{workflow}:{name}"
        if "uses" in job:  # a call of a reusable workflow: its own jobs carry the rules
            continue
        assert isinstance(job.get("timeout-minutes"), int), where
        assert job["runs-on"].startswith("${{ vars.FORKCAST_RUNNER_"), where
        assert job["runs-on"].endswith("|| 'ubuntu-latest' }}"), where
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, where
    for path in [*workflow_files(), *ACTIONS.glob("*/action.yml")]:
        document = load(path)
        assert "pull_request_target" not in (document.get("on") or {}), path.name
        for step in steps_of(document):
            # Values reach scripts through env:, never pasted into them.
            assert "${{" not in step.get("run", ""), f"{path.name}: {step.get('name')}"


def test_every_upload_survives_a_rerun_of_its_job() -> None:
    """upload-artifact v4 refuses a second artifact of one name in a workflow run, and "Re-run failed jobs" is the
    same run (actions/upload-artifact#493): without overwrite, the README's advice to re-run would fail there."""
    uploads = [
        (path.name, step)
        for path in workflow_files()
        for step in steps_of(load(path))
        if step.get("uses", "").startswith("actions/upload-artifact@")
    ]
    assert len(uploads) == 4
    for workflow, step in uploads:
        assert step["with"].get("overwrite") is True, f"{workflow}: {step['with']['name']}"


def test_every_job_that_checks_out_the_project_may_read_it() -> None:
    """A job's own permissions replace the workflow's: one that names only `actions: read` cannot check out a
    private repository ("Repository not found", actions/checkout#445)."""
    for path in workflow_files():
        document = load(path)
        for name, job in document["jobs"].items():
            if not any(step.get("uses", "").startswith("actions/checkout@") for step in job.get("steps", [])):
                continue
            permissions = job.get("permissions", document["permissions"])
            assert permissions.get("contents") in {"read", "write"}, f"{path.name}:{name}"


def test_production_waits_for_the_tests_but_a_rollback_does_not_run_them() -> None:
    release = load(WORKFLOWS / "release.yml")["jobs"]
    assert release["tests"]["uses"] == "./.github/workflows/ci.yml"
    assert release["tests"]["if"] == "${{ inputs.rollback-to == '' }}"
    assert "workflow_call" in load(WORKFLOWS / "ci.yml")["on"]
    production = release["production"]
    assert "tests" in production["needs"]
    assert "needs.tests.result == 'success' || needs.tests.result == 'skipped'" in production["if"]
    for job in ("build", "staging", "approval"):
        assert f"needs.{job}.result == 'success'" in production["if"]
    assert "tests" not in release["staging"].get("needs", [])  # staging does not wait: the tests run beside it


def test_scheduled_jobs_with_nothing_to_do_do_not_start_a_runner() -> None:
    drift = load(WORKFLOWS / "monitor.yml")["jobs"]["drift"]["if"]
    assert drift == "${{ vars.FORKCAST_INFERENCE_LOG != '' || github.event_name == 'workflow_dispatch' }}"
    # Health: a URL given, or a lasting target whose deployment records one.
    health = load(WORKFLOWS / "health.yml")["jobs"]["probe"]["if"]
    assert health == (
        "${{ vars.FORKCAST_PRODUCTION_URL != '' || vars.FORKCAST_DEPLOY_TARGET == 'kubernetes' || "
        "vars.FORKCAST_DEPLOY_TARGET == 'self-hosted' || github.event_name == 'workflow_dispatch' }}"
    )


def test_installs_come_from_a_cache_keyed_by_the_lock_and_release_jobs_skip_the_development_packages() -> None:
    setup = load(ACTIONS / "setup" / "action.yml")["runs"]["steps"]
    cache = next(step for step in setup if step.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/uv"
    assert "hashFiles('uv.lock')" in cache["with"]["key"]
    install = next(step for step in setup if step.get("name") == "Install the locked environment")
    assert install["env"]["UV_SYNC_FLAGS"] == "${{ inputs.dev == 'false' && '--no-dev' || '' }}"
    assert "$(UV_SYNC_FLAGS)" in (ROOT / "Makefile").read_text()
    for workflow, name, job in jobs():
        for step in job.get("steps", []):
            if step.get("uses") == "./.github/actions/setup":
                runs_tests = workflow == "ci.yml" or (workflow, name) in {("pipeline.yml", "pipeline"),
                                                                          ("monitor.yml", "drift")}  # fmt: skip
                # No tests run in the release jobs; the pipeline and the monitor may pull from S3 (dvc-s3).
                assert step.get("with", {}).get("dev", True) is runs_tests, f"{workflow}:{name}"


def test_the_workflows_never_push_data_they_pulled() -> None:
    """The data the pipeline pulls is in the remote already, and its outputs are `push: false`: a push would
    only spend the run's time (people push data with the commit that names it)."""
    for path in workflow_files():
        for step in steps_of(load(path)):
            assert "dvc push" not in step.get("run", ""), f"{path.name}: {step.get('name')}"


def test_the_drift_reference_comes_from_the_commit_production_was_released_from() -> None:
    drift = load(WORKFLOWS / "monitor.yml")["jobs"]["drift"]
    names = [step.get("name") for step in drift["steps"]]
    assert names.index("Production's data and settings") < names.index(
        "The reference (the served model and its training data)"
    )
    step = drift["steps"][names.index("Production's data and settings")]
    assert 'forkcast release production-commit --repo "$GITHUB_REPOSITORY"' in step["run"]
    assert 'git checkout "$commit" -- "${files[@]}"' in step["run"]
    assert drift["steps"][0]["with"]["fetch-depth"] == 0
    # Settings of an older release that this branch's code refuses: the branch's own, with a warning.
    reference = drift["steps"][names.index("The reference (the served model and its training data)")]["run"]
    assert "if ! dvc repro refit; then" in reference
    assert "git checkout HEAD -- data.dvc feed.dvc params.yaml dataset.yaml" in reference


def test_deploys_are_serialised_and_never_cancelled() -> None:
    release = load(WORKFLOWS / "release.yml")["jobs"]
    for environment in ("staging", "production"):
        concurrency = release[environment]["concurrency"]
        assert concurrency["group"] == f"deploy-{environment}-${{{{ github.repository }}}}"
        assert concurrency["cancel-in-progress"] is False
        # Without a queue a group keeps one pending job, and a newer one cancels it: a rollback would cancel the
        # release waiting at the approval. With it, they wait in order (up to 100).
        assert concurrency["queue"] == "max"
    # The pipeline cancels superseded pull-request runs only; runs on main have a group each (their run id),
    # so one waiting at the approval does not hold back the next push.
    concurrency = load(WORKFLOWS / "pipeline.yml")["concurrency"]
    assert concurrency["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"
    assert concurrency["group"] == "pipeline-${{ github.event_name == 'pull_request' && github.ref || github.run_id }}"


def test_pull_requests_from_forks_skip_what_needs_secrets_with_a_message() -> None:
    pipeline = load(WORKFLOWS / "pipeline.yml")["jobs"]["pipeline"]
    assert "head.repo.full_name != github.repository" in pipeline["env"]["NO_SECRETS"]
    assert "dependabot[bot]" in pipeline["env"]["NO_SECRETS"]
    scripts = {step.get("name"): step.get("run", "") for step in pipeline["steps"]}
    for name in ("Fetch the data (DVC)", "Run the pipeline (dvc repro)", "Comment on the pull request"):
        assert '"$NO_SECRETS" = true' in scripts[name]
        assert "::notice::pull requests from forks and Dependabot get" in scripts[name]


def test_fetching_the_data_without_secrets_falls_back_to_the_repositorys_remote(tmp_path: Path) -> None:
    """The step's own script, run with a fake `make` and `dvc`: which remote it pulls from, and what it says."""
    script = next(
        step["run"]
        for step in load(WORKFLOWS / "pipeline.yml")["jobs"]["pipeline"]["steps"]
        if step.get("name") == "Fetch the data (DVC)"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, status in (("make", "$MAKE_STATUS"), ("dvc", "0")):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\nexit {status}\n')
        (bin_dir / name).chmod(0o755)

    def fetch(**env: str) -> tuple[subprocess.CompletedProcess[str], str]:
        calls = tmp_path / "calls"
        calls.unlink(missing_ok=True)
        variables = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "MAKE_STATUS": "0", **env}
        result = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script], env=variables, capture_output=True, text=True, check=False
        )
        return result, calls.read_text() if calls.exists() else ""

    result, calls = fetch(DVC_REMOTE="s3remote", NO_SECRETS="false")
    assert (result.returncode, calls) == (0, "dvc pull --remote s3remote data.dvc feed.dvc\n")
    result, calls = fetch(DVC_REMOTE="", NO_SECRETS="true")
    assert (result.returncode, calls) == (0, "make data\n")
    assert "::notice::pull requests from forks and Dependabot get no secrets" in result.stdout
    result, _ = fetch(DVC_REMOTE="", NO_SECRETS="true", MAKE_STATUS="1")
    assert result.returncode == 1
    assert "::error::this commit's data is not in the repository's own DVC remote" in result.stdout


def test_production_is_refused_unless_the_environment_requires_a_reviewer() -> None:
    """GitHub creates a missing environment without protection: the release checks before production starts."""
    release = load(WORKFLOWS / "release.yml")["jobs"]
    assert "approval" in release["production"]["needs"]
    guard = release["approval"]
    assert guard["permissions"] == {"contents": "read", "actions": "read"}  # contents: checking out a private repo
    assert any("forkcast check-approval" in step.get("run", "") for step in guard["steps"])
    for caller in (
        load(WORKFLOWS / "pipeline.yml")["jobs"]["release"],
        load(WORKFLOWS / "rollback.yml")["jobs"]["rollback"],
    ):
        assert caller["permissions"]["actions"] == "read"  # a called workflow gets no more than its caller job


def test_the_production_tag_moves_only_after_the_post_deploy_smoke_tests() -> None:
    steps = [step.get("name") for step in load(WORKFLOWS / "release.yml")["jobs"]["production"]["steps"]]
    assert steps.index("Post-deploy smoke tests") < steps.index("Tag the digest `production` (no rebuild)")
    assert steps.index("Tag the digest `production` (no rebuild)") < steps.index("Publish the release manifest")


def test_monitoring_runs_nightly_and_on_demand_and_keeps_one_issue() -> None:
    monitor = load(WORKFLOWS / "monitor.yml")
    assert monitor["on"]["schedule"][0]["cron"].split()[2:] == ["*", "*", "*"]  # every day
    assert "workflow_dispatch" in monitor["on"]
    steps = {step.get("name"): step for step in monitor["jobs"]["drift"]["steps"]}
    drift = steps["Drift report"]["run"]
    for status, verdict in (("0", "no-drift"), ("1", "drift"), ("3", "no-data")):
        assert f'{status}) echo "verdict={verdict}"' in drift  # the drift command's documented exit codes
    assert '*) exit "$status"' in drift  # anything else (2 a usage error, 4 the job failed) fails the job
    assert "--marker forkcast-drift" in steps["Drift issue"]["run"]
    assert "no-data" not in steps["Drift issue"]["if"]  # no data is not news: no issue
    assert "vars.FORKCAST_RETRAIN_ON_DRIFT == 'true'" in steps["Retrain"]["if"]
    assert "gh workflow run pipeline.yml" in steps["Retrain"]["run"]
    health = load(WORKFLOWS / "health.yml")
    assert "schedule" in health["on"]
    probe = {step.get("name"): step for step in health["jobs"]["probe"]["steps"]}
    assert "forkcast probe --url" in probe["Probe"]["run"]
    assert "--marker forkcast-health" in probe["Health issue"]["run"]


def test_every_deploy_target_follows_the_seam() -> None:
    targets = sorted((ROOT / "deploy" / "targets").glob("*.sh"))
    assert {path.stem for path in targets} >= {"runner", "local"}
    for path in targets:
        assert os.access(path, os.X_OK), path
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n")
        assert "set -euo pipefail" in text
        # The one line it prints on stdout, itself or through `forkcast target` (which smoke-tests, too).
        assert '"url=' in text or "forkcast target " in text


def test_an_unknown_deploy_target_is_named_with_the_known_ones(tmp_path: Path) -> None:
    deploy = load(ACTIONS / "deploy" / "action.yml")["runs"]["steps"][0]
    env = tool_env(TARGET="kubernetes-someday", ENVIRONMENT="staging", GITHUB_OUTPUT=str(tmp_path / "out"))
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", deploy["run"]], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "unknown deploy target 'kubernetes-someday'" in result.stdout
    assert "kubernetes,local,runner,self-hosted" in result.stdout
    assert not (tmp_path / "out").exists()


def test_the_deploy_step_passes_on_the_target_s_url_and_says_in_the_summary_which_target_ran(tmp_path: Path) -> None:
    deploy = load(ACTIONS / "deploy" / "action.yml")["runs"]["steps"][0]
    targets = tmp_path / "deploy" / "targets"
    targets.mkdir(parents=True)
    (targets / "lasting.sh").write_text(
        "#!/usr/bin/env bash\necho deploying >&2\necho url=https://example.test\necho smoked=true\n"
    )
    (targets / "lasting.sh").chmod(0o755)
    output, summary = tmp_path / "out", tmp_path / "summary"
    env = tool_env(TARGET="lasting", ENVIRONMENT="production", FORKCAST_IMAGE="ghcr.io/o/r@sha256:" + "a" * 64,
                   GITHUB_OUTPUT=str(output), GITHUB_STEP_SUMMARY=str(summary))  # fmt: skip
    result = subprocess.run(["bash", "-eo", "pipefail", "-c", deploy["run"]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert output.read_text().splitlines() == ["url=https://example.test", "smoked=true"]
    assert "### production: the `lasting` target" in summary.read_text()
    assert "at https://example.test" in summary.read_text()
    assert "stops serving when the job ends" not in summary.read_text()
    # A failed deploy: the job fails with an error annotation, and the summary says which target failed.
    (targets / "lasting.sh").write_text("#!/usr/bin/env bash\necho 'the rollout did not finish' >&2\nexit 1\n")
    result = subprocess.run(["bash", "-eo", "pipefail", "-c", deploy["run"]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "::error::the deploy to production through the 'lasting' target failed (exit 1)" in result.stdout
    assert "### production: the `lasting` target failed" in summary.read_text()


def test_each_environment_chooses_its_target_and_hands_it_the_cluster_and_the_settings() -> None:
    release = load(WORKFLOWS / "release.yml")
    assert (
        release["env"]["DEPLOY_TARGET"] == "${{ vars.FORKCAST_DEPLOY_TARGET || 'runner' }}"
    )  # the zero-secret default
    for environment in ("staging", "production"):
        job = release["jobs"][environment]
        # An environment's own variable wins: read in the step, where the environment's variables are known.
        step = next(step for step in job["steps"] if step.get("name") == "Deploy")
        assert step["with"]["target"] == "${{ vars.FORKCAST_DEPLOY_TARGET || 'runner' }}"
        assert step["with"]["kubeconfig"] == "${{ secrets.KUBECONFIG }}"
        assert step["with"]["url"] == "${{ vars.FORKCAST_URL }}"
        for name in ("FORKCAST_API_TOKEN", "FORKCAST_INFERENCE_LOG", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert name in step["env"], (environment, name)
        # A machine of your own: its runner label, from a repository variable (runs-on cannot read an environment's).
        assert f"vars.FORKCAST_RUNNER_{environment.upper()}" in job["runs-on"]
    assert {"KUBECONFIG", "FORKCAST_API_TOKEN"} <= set(release["on"]["workflow_call"]["secrets"])  # documented
    for caller in ("pipeline.yml", "rollback.yml"):
        jobs_ = load(WORKFLOWS / caller)["jobs"]
        call = next(job for job in jobs_.values() if job.get("uses") == "./.github/workflows/release.yml")
        # Environment secrets reach a called workflow only when inherited (actions/runner#1490, #4453).
        assert call["secrets"] == "inherit", caller


def test_the_kind_workflow_deploys_then_proves_the_automatic_rollback_on_a_real_cluster() -> None:
    workflow = load(WORKFLOWS / "kubernetes.yml")
    assert "workflow_dispatch" in workflow["on"]
    assert "deploy/**" in workflow["on"]["pull_request"]["paths"]
    assert "src/forkcast/targets/**" in workflow["on"]["pull_request"]["paths"]
    steps = {step.get("name"): step for step in workflow["jobs"]["kind"]["steps"]}
    kind = steps["A kind cluster with a local registry"]
    assert kind["uses"].startswith("helm/kind-action@")
    assert kind["with"]["registry"] is True
    assert "deploy/targets/kubernetes.sh" in steps["Deploy the release to staging"]["run"]
    rollback = steps["A broken release is rolled back automatically"]["run"]
    assert "forkcast target kubernetes" in rollback
    assert '[ "$status" -ne 1 ] || [ "$serving" != "$GOOD" ]' in rollback  # fails unless rolled back to the good one
    assert "exit 1" in steps["Build the release's image and push it to the cluster's registry"]["run"]  # broken image


# ---- act runs the workflows on this machine --------------------------------------------------------


@dataclass(frozen=True)
class Act:
    project: Path
    artifacts: Path
    cache: Path
    github: FakeGitHub  # the GitHub API the workflows talk to (GitHub itself is out of reach)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [str(BIN / "act"), *args, "-P", "ubuntu-latest=-self-hosted", "--no-cache-server"]
        command += ["--action-cache-path", str(self.cache), "--env", f"FORKCAST_ACT_ARTIFACTS={self.artifacts}"]
        command += ["--env", f"GITHUB_API_URL={self.github.url}", "--env", f"GITHUB_REPOSITORY={REPO}"]
        command += ["-s", f"GITHUB_TOKEN={TOKEN}"]
        for uses in sorted(remote_actions()):
            action = SHA_PIN.match(uses)
            assert action
            if not action["action"].endswith("/checkout"):
                command += ["--local-repository", f"{uses}={STAND_INS / action['action'].split('/')[1]}"]
        env = {k: v for k, v in tool_env().items() if k != "PYTHONDONTWRITEBYTECODE"}  # no bytecode pass per job
        result = subprocess.run(command, cwd=self.project, env=env, capture_output=True, text=True, check=False)
        (self.cache.parent / f"act-{len(list(self.cache.parent.glob('act-*.log')))}.log").write_text(result.stdout)
        return result

    def release_to_staging(self) -> subprocess.CompletedProcess[str]:
        """The release workflow's build and staging jobs; production waits for an approval act cannot give."""
        try:
            return self.run(
                "workflow_call", "-W", ".github/workflows/release.yml", "-j", "staging",
                "--var", "FORKCAST_DEPLOY_TARGET=local",
            )  # fmt: skip
        finally:
            self.stop_servers()

    def stop_servers(self) -> None:
        """act deletes a job's workspace when it ends; a local deploy it started keeps serving from there."""
        for process in Path("/proc").glob("[0-9]*"):
            try:
                cwd = os.readlink(process / "cwd")
            except OSError:
                continue
            if cwd.startswith(str(self.cache)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(process.name), signal.SIGTERM)


def tail(result: subprocess.CompletedProcess[str], lines: int = 60) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-lines:])


def succeeded_jobs(result: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"^\[[^/\]]+/([^\]]+)\] 🏁  Job succeeded$", result.stdout, re.MULTILINE))


@pytest.fixture(scope="module")
def act(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Act]:
    """A fresh clone whose local deployments use free ports, and an act cache and artifact store of its own."""
    root = tmp_path_factory.mktemp("act")
    project = make_project(root / "project")
    params = project / "params.yaml"
    text = params.read_text()
    text = re.sub(r"staging_port: \d+", f"staging_port: {free_port()}", text)
    params.write_text(re.sub(r"production_port: \d+", f"production_port: {free_port()}", text))
    # act 0.2.89's schema does not know concurrency's `queue` yet and refuses the workflow (nektos/act#6095);
    # GitHub's own schema and actionlint check it in the lint tests above.
    release = project / ".github" / "workflows" / "release.yml"
    release.write_text(re.sub(r"^ +queue: max.*\n", "", release.read_text(), flags=re.MULTILINE))
    run_ok(["git", "commit", "-qam", "free ports for this machine; no concurrency queue for act"], project)
    with serving(FakeGitHub()) as github:
        runner = Act(project, root / "artifacts", root / "cache", github)
        yield runner
        runner.stop_servers()


@pytest.mark.slow
@pytest.mark.integration
def test_act_runs_the_pipeline_workflow(act: Act) -> None:
    result = act.run("push", "-W", ".github/workflows/pipeline.yml", "-j", "pipeline")

    assert result.returncode == 0, tail(result)
    assert succeeded_jobs(result) == {"Validate, train, evaluate, gate"}
    assert "Summary - ## Forkcast pipeline: eligible for release" in result.stdout
    assert "::set-output:: eligible=true" in result.stdout
    kept = act.artifacts / "pipeline-outputs"
    for output in ("registry/gate.json", "model/model.joblib", "prepared/test.parquet", "validation/report.json"):
        assert (kept / output).exists(), output


@pytest.mark.slow
@pytest.mark.integration
def test_a_second_pipeline_run_compares_with_the_first_release_and_releases_nothing_new(
    act: Act, tmp_path: Path
) -> None:
    """No MLflow server: GitHub Releases are the registry. The first run's model, published as the release workflow
    publishes it, is production for the second run, which trains the same model: compared, and nothing to release."""
    kept = act.artifacts / "pipeline-outputs"
    if not (kept / "served").exists():
        pytest.fail("runs after test_act_runs_the_pipeline_workflow, which keeps the pipeline's outputs")
    served = kept / "served"
    assets = write_model_assets(served / "model.joblib", served / "model.onnx", served / "metadata.json", tmp_path)
    act.github.add_release("forkcast-v1-0123456789ab", "2026-12-01T10:00:00Z", {a.name: a.read_bytes() for a in assets})
    act.github.latest = "forkcast-v1-0123456789ab"
    try:
        result = act.run("push", "-W", ".github/workflows/pipeline.yml", "-j", "pipeline")
    finally:
        act.github.latest, act.github.releases = None, []

    assert result.returncode == 0, tail(result)
    assert "registered 1 released model(s) from octocat/forkcast; production is forkcast-v1-0123456789ab" in (
        result.stdout
    )
    gate = json.loads((kept / "registry" / "gate.json").read_text())
    assert gate["version"] == "1"  # the released model's version: the same bytes
    assert [c["against"] for c in gate["verdict"]["comparisons"]] == ["the seasonal baseline", "production v1"]
    assert gate["verdict"]["unchanged"]
    assert "::set-output:: unchanged=true" in result.stdout
    assert "Summary - ## Forkcast pipeline: the same model as production: nothing to release" in result.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_act_runs_the_release_through_the_staging_smoke_tests(act: Act) -> None:
    if not (act.artifacts / "pipeline-outputs").exists():
        pytest.fail("runs after test_act_runs_the_pipeline_workflow, which keeps the pipeline's outputs")
    result = act.release_to_staging()

    assert result.returncode == 0, tail(result)
    assert succeeded_jobs(result) == {"Build the bento and its image", "Deploy to staging and smoke-test"}
    assert "Promote to production" not in result.stdout  # production waits for its approval
    assert "Smoke tests: PASSED" in result.stdout
    assert re.search(r"pass  known answers: 50 golden cases", result.stdout)
    release = act.artifacts / "release"
    built = (release / "build" / "build.json").read_text()
    assert (release / "release" / "bento.bento").stat().st_size > 0
    args = (release / "release" / "image.args").read_text().splitlines()
    assert args[args.index("--tag") + 1].startswith(f"ghcr.io/{REPO}:v1-")  # the repository act is told it runs in
    assert f"dev.forkcast.bento={yaml.safe_load(built)['bento']}" in args
    # The staging job's deployment record, which production adds to the release's record.
    recorded = json.loads(re.search(r"::set-output:: deployment=(\{.*\})", result.stdout)[1])
    assert (recorded["environment"], recorded["target"], recorded["bento"]) == (
        "staging",
        "local",
        yaml.safe_load(built)["bento"],
    )
    # The one step GitHub runs and act cannot: no container engine here, so the local target skips it.
    assert "Run Main Build and push the image" not in result.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_a_failing_smoke_test_stops_the_release_before_production(act: Act) -> None:
    params = act.project / "params.yaml"
    original = params.read_text()
    params.write_text(re.sub(r"p95_budget_ms: [\d.]+", "p95_budget_ms: 0.001", original))  # no server is that fast
    try:
        result = act.release_to_staging()
    finally:
        params.write_text(original)
    assert result.returncode != 0
    assert "❌  Failure - Main Smoke tests" in result.stdout
    assert "FAIL  latency budget" in result.stdout
    assert "Smoke tests: FAILED" in result.stdout  # the report still reaches the job summary
    assert succeeded_jobs(result) == {"Build the bento and its image"}


@pytest.mark.slow
@pytest.mark.integration
def test_a_broken_pipeline_step_fails_the_pipeline_workflow(act: Act) -> None:
    params = act.project / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("  learning_rate:", "  learning_rat:"))
    try:
        result = act.run("push", "-W", ".github/workflows/pipeline.yml", "-j", "pipeline")
    finally:
        params.write_text(original)
    assert result.returncode != 0
    # The first step that reads params.yaml stops the job: seeding the registry, before `dvc repro`.
    assert "❌  Failure - Main Production from the GitHub Releases (no MLflow server)" in result.stdout
    assert "learning_rat" in result.stdout  # the message names the typo
    assert "::set-output:: eligible" not in result.stdout  # so the release job does not start


@pytest.mark.slow
@pytest.mark.integration
def test_the_nightly_drift_job_is_skipped_without_an_inference_log(act: Act) -> None:
    result = act.run("schedule", "-W", ".github/workflows/monitor.yml", "-j", "drift", "-v")

    assert result.returncode == 0, tail(result)
    assert "Skipping job 'Input and prediction drift'" in result.stdout
    assert "Run Main" not in result.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_act_runs_the_nightly_drift_job_on_a_fixture_log(
    act: Act, trained: TrainedModel, data_file: Path, params: Params
) -> None:
    """December traffic, logged by the real writer with the default model's answers, outside the project (act copies
    only tracked files): the job builds its reference, finds the drift, and would open the one issue."""
    dataset = params.dataset
    december = build_features(load_raw(data_file, dataset), dataset)
    december = december[december["month"] == 12].head(24 * 14)
    base = act.project.parent / "fixture-log"  # FORKCAST_INFERENCE_LOG: production logs under base/production
    sink = base / "production"
    inputs = dataset.inputs()
    log = InferenceLog(str(sink), inputs, environment="production", flush_seconds=3600)
    predictions = trained.pipeline.predict(december[list(inputs.names)])
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    for day in range(14):
        rows = slice(day * 24, day * 24 + 24)
        chunk = columns_of_frame(december.iloc[rows], inputs.names)
        log.append(f"req-{day}", "1", chunk, predictions[rows], timestamp=now)
    log.append("smoke-0", "1", columns_of_frame(december.iloc[:1], inputs.names), predictions[:1], timestamp=now)
    log.close()

    result = act.run(
        "schedule", "-W", ".github/workflows/monitor.yml", "-j", "drift",
        "--var", f"FORKCAST_INFERENCE_LOG={base}", "--var", "FORKCAST_DRIFT_ISSUES=dry-run",
    )  # fmt: skip

    assert result.returncode == 0, tail(result)
    # No release in the fake GitHub: the reference is the branch's own data (a release's commit is tested in
    # test_github_registry.py, the checkout of its files below).
    assert "no production release yet: the reference is this branch's data and settings" in result.stdout
    assert "::set-output:: verdict=drift" in result.stdout
    assert "Summary - ## Drift: production: **DRIFT**" in result.stdout
    assert "336 records (1 smoke-test and probe records dropped)" in result.stdout
    assert f"POST /repos/{REPO}/issues  (dry run: not sent)" in result.stdout
    assert '"title": "Input drift in production"' in result.stdout
    assert "Run Main Retrain" not in result.stdout  # retraining is opt-in (FORKCAST_RETRAIN_ON_DRIFT)
    kept = act.artifacts / "drift-report" / "production"
    assert (kept / "report.html").stat().st_size > 100_000
    assert json.loads((kept / "drift.json").read_text())["verdict"] == "drift"
