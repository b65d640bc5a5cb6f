"""The project's data round-trips through an S3 remote: a real S3-compatible server (moto) on 127.0.0.1.

The steps are the ones the README gives a user who switches the default remote to S3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from ..conftest import BIN, ROOT, free_port, run, run_ok, tool_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUCKET = "forkcast-dvc"
PREFIX = "dvcstore"
REMOTE = "s3remote"
TARGETS = ["data.dvc", "feed.dvc"]  # without targets, `dvc pull` also wants pipeline outputs never pushed
S3_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",  # no 1 s+ probe of an EC2 metadata endpoint that is not there
    "NO_PROXY": "127.0.0.1",  # a host proxy must not intercept the local server
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self, service: str = "s3", key_id: str = "testing", secret: str = "testing") -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )

    def object_keys(self) -> set[str]:
        listing = self.client().list_objects_v2(Bucket=BUCKET)
        return {item["Key"] for item in listing.get("Contents", [])}


@pytest.fixture(autouse=True)
def hermetic_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process boto3 client sees no host AWS settings either (subprocesses get tool_env, which strips them)."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    """A moto S3 server of its own per test (the negative test turns authentication on, server-wide)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path / "moto.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=tool_env(**S3_ENV),
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, f"moto_server exited early:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, f"moto_server did not answer on {endpoint}:\n{log.read_text()}"
                time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def dvc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(["dvc", *args], cwd, **S3_ENV)


def dvc_ok(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_ok(["dvc", *args], cwd, **S3_ENV)


def set_credentials(project: Path, key_id: str, secret: str) -> None:
    # --local writes .dvc/config.local, which .dvc/.gitignore keeps out of git.
    dvc_ok(["remote", "modify", "--local", REMOTE, "access_key_id", key_id], project)
    dvc_ok(["remote", "modify", "--local", REMOTE, "secret_access_key", secret], project)


def switch_to_s3(project: Path, s3: S3Server, key_id: str = "testing", secret: str = "testing") -> None:
    """What the README tells a user to type."""
    dvc_ok(["remote", "add", "-d", REMOTE, f"s3://{BUCKET}/{PREFIX}"], project)
    dvc_ok(["remote", "modify", REMOTE, "endpointurl", s3.endpoint], project)
    set_credentials(project, key_id, secret)


def object_key(md5: str) -> str:
    return f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"


def expected_keys(project: Path) -> set[str]:
    """Each .dvc file's directory manifest plus every file it lists, as DVC 3 lays them out."""
    keys: set[str] = set()
    for target in TARGETS:
        (out,) = yaml.safe_load((project / target).read_text())["outs"]
        keys.add(object_key(out["md5"]))
        manifest = project / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
        keys |= {object_key(entry["md5"]) for entry in json.loads(manifest.read_text())}
    return keys


def test_data_pushed_to_s3_pulls_back_identical_in_a_fresh_clone(project: Path, s3: S3Server, tmp_path: Path) -> None:
    s3.client().create_bucket(Bucket=BUCKET)
    switch_to_s3(project, s3)

    # The remote and endpoint are shared through git; the credentials are not.
    config = (project / ".dvc" / "config").read_text()
    assert f"remote = {REMOTE}" in config
    assert s3.endpoint in config
    assert "secret_access_key" not in config
    assert "access_key_id" not in config
    assert "secret_access_key = testing" in (project / ".dvc" / "config.local").read_text()
    assert run_ok(["git", "status", "--porcelain"], project).stdout.split() == ["M", ".dvc/config"]

    pushed = dvc_ok(["push", *TARGETS], project)
    assert "2 files pushed" in pushed.stdout  # the data file and its directory: the feed holds the same bytes
    assert s3.object_keys() == expected_keys(project)

    # A teammate clones the commit that switched remotes, brings their own credentials, and pulls from S3 only.
    run_ok(["git", "commit", "-q", "-am", "Use the S3 remote"], project)
    clone = tmp_path / "clone"
    run_ok(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    shutil.rmtree(clone / ".dvc" / "storage")  # the in-repo remote is gone: S3 is the only source left
    assert not (clone / "data").exists()
    assert not (clone / ".dvc" / "cache").exists()
    set_credentials(clone, "testing", "testing")
    dvc_ok(["pull", *TARGETS], clone)

    for name in ("data/bikeshare_hourly.csv", "feed/bikeshare_hourly.csv"):
        assert (clone / name).read_bytes() == (ROOT / name).read_bytes(), name


def test_push_with_a_wrong_secret_fails_and_says_forbidden(project: Path, s3: S3Server) -> None:
    # moto accepts any credentials until authentication is switched on; do that with a real IAM key first.
    s3.client().create_bucket(Bucket=BUCKET)
    iam = s3.client("iam")
    iam.create_user(UserName="dvc")
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName="dvc", PolicyName="s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="dvc")["AccessKey"]
    enforce = urllib.request.Request(  # a form content type would make the server drop the body
        f"{s3.endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(enforce, timeout=5):
        pass

    switch_to_s3(project, s3, key_id=key["AccessKeyId"], secret="not-the-secret")
    failed = dvc(["push", *TARGETS], project)
    assert failed.returncode != 0
    # S3 answers HEAD with a bare 403 (no body, so no error code): this is all DVC can report, here as on AWS.
    assert "403" in failed.stderr
    assert "Forbidden" in failed.stderr
    good = s3.client(key_id=key["AccessKeyId"], secret=key["SecretAccessKey"])
    assert "Contents" not in good.list_objects_v2(Bucket=BUCKET)

    # The same push with the right secret works, so the failure above was the credentials and nothing else.
    set_credentials(project, key["AccessKeyId"], key["SecretAccessKey"])
    assert "2 files pushed" in dvc_ok(["push", *TARGETS], project).stdout
