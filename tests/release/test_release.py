"""The release records: how the image is built from a bento, and the manifest a release carries."""

from __future__ import annotations

import json
import re
from pathlib import Path

import bentoml
import httpx
import pytest
import sklearn
import yaml

from forkcast import atomic
from forkcast.cli import main
from forkcast.release import records

from ..conftest import ROOT, Built, tool_env
from ..serving.test_serving import launch

DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.fixture
def record(built: Built) -> dict:
    return atomic.read_json(built.output_dir / "build.json")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ghcr.io/Octo-Cat/Forkcast", "ghcr.io/octo-cat/forkcast"),
        ("localhost:5000/team/model", "localhost:5000/team/model"),
    ],
)
def test_image_repositories_are_lower_cased_for_registries(name: str, expected: str) -> None:
    assert records.image_repository(name) == expected


@pytest.mark.parametrize(
    "name",
    ["", "ghcr.io", "ghcr.io/owner/name:tag", "ghcr.io/owner name", "ghcr.io//x", "ghcr.io/-x/y", "ghcr.io/x/y z"],
)
def test_malformed_image_repositories_are_refused(name: str) -> None:
    with pytest.raises(records.ReleaseError, match="not an image repository"):
        records.image_repository(name)


@pytest.mark.parametrize("digest", ["", "sha256:abc", "md5:" + "0" * 64, "sha256:" + "G" * 64, DIGEST + "\n"])
def test_malformed_digests_are_refused(digest: str) -> None:
    with pytest.raises(records.ReleaseError, match="not an image digest"):
        records.check_digest(digest)


@pytest.fixture(scope="module")
def context(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return records.image_context(built.tag, tmp_path_factory.mktemp("release") / "image-context")


def test_the_image_is_built_from_the_bento_its_model_and_bentomls_dockerfile(
    built: Built, record: dict, context: Path
) -> None:
    plan = records.plan_image(
        record, context, "ghcr.io/Octo/Forkcast", source="https://x/octo/forkcast", revision="c0ffee"
    )

    args = plan.buildx_args()
    assert args[-1] == str(context)
    assert args[args.index("--file") + 1] == str(context / "env" / "docker" / "Dockerfile")
    dockerfile = (context / "env" / "docker" / "Dockerfile").read_text()
    python = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["docker"]["python_version"]
    assert re.search(rf"^FROM python:{re.escape(python)}-slim", dockerfile, re.MULTILINE)
    assert "COPY --chown=bentoml:bentoml . ./" in dockerfile  # the whole context, models included
    model = record["model"].split(":")
    assert (context / "models" / model[0] / model[1] / "model.yaml").exists()
    requirements = (context / "env" / "python" / "requirements.txt").read_text().split()
    assert f"bentoml=={bentoml.__version__}" in requirements  # the image runs what was tested here
    assert f"scikit-learn=={sklearn.__version__}" in requirements
    version = built.tag.split(":")[1]
    assert args[args.index("--tag") + 1] == f"ghcr.io/octo/forkcast:{version}"
    labels = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--label")
    assert labels["org.opencontainers.image.revision"] == "c0ffee"
    assert labels["org.opencontainers.image.source"] == "https://x/octo/forkcast"
    assert labels["dev.forkcast.bento"] == built.tag
    for key in ("model_version", "run_id", "data_hash", "trained_at", "gate"):
        assert labels[f"dev.forkcast.{key}"] == str(built.lineage[key])


@pytest.mark.slow
@pytest.mark.integration
def test_the_image_context_serves_its_model_from_an_empty_store(built: Built, context: Path, tmp_path: Path) -> None:
    """What the container does: `bentoml serve` of the context, with an empty BENTOML_HOME and no project code."""
    environment = {k: v for k, v in tool_env().items() if not k.startswith("FORKCAST_")}
    environment |= {
        "BENTOML_HOME": str(tmp_path / "empty-home"),
        "BENTOML_CONTAINERIZED": "true",
        "PYTHONPATH": str(context / "src"),  # the bento's code, not this checkout's
        "OMP_NUM_THREADS": "1",
    }
    server = launch(str(context), environment, tmp_path)
    try:
        golden = json.loads(built.golden.read_text())
        answer = httpx.post(f"{server.url}/predict", json={"records": golden["records"][:5]}, timeout=10).json()
        metadata = httpx.post(f"{server.url}/metadata", json={}, timeout=10).json()
    finally:
        server.stop()
    assert metadata["model_version"] == built.lineage["model_version"]
    assert answer["predictions"] == pytest.approx(golden["expected"][:5], abs=golden["tolerance"])
    assert f"code from {context / 'src' / 'forkcast'}" in server.output.read_text()


def test_the_manifest_names_everything_a_rollback_needs(record: dict, built: Built, tmp_path: Path) -> None:
    spread = {"backtest_model_rmse_mean": 43.7584, "backtest_model_rmse_std": 17.8472}
    record = {**record, "lineage": {**record["lineage"], "metrics": {**record["lineage"]["metrics"], **spread}}}
    manifest = records.manifest(
        record, ROOT / "params.yaml", image="ghcr.io/O/R", digest=DIGEST, commit="c0ffee", run_url="https://run/1",
        approved_by="alice",
    )  # fmt: skip
    path = records.write_manifest(manifest, tmp_path)

    written = json.loads(path.read_text())
    assert written["image"] == f"ghcr.io/o/r@{DIGEST}"
    assert written["model"]["version"] == built.lineage["model_version"]
    assert written["data_hash"] == built.lineage["data_hash"]
    assert written["metrics"] == {**built.lineage["metrics"], **spread}
    assert written["approved_by"] == "alice"
    assert written["params"] == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert written["git_commit"] == "c0ffee"
    markdown = (tmp_path / "manifest.md").read_text()
    assert f"ghcr.io/o/r@{DIGEST}" in markdown
    assert "Rollback" in markdown
    assert "| production approved by | @alice |" in markdown
    assert "| backtest (mean ± std over the folds) | rmse 43.76 ± 17.85 |" in markdown
    # A rollback reads it back into the same outputs the build job gives.
    outputs = records.manifest_outputs(records.read_manifest(path))
    assert outputs["bento"] == built.tag
    assert outputs["digest"] == DIGEST
    assert outputs["model"] == record["model"]


def test_an_image_without_its_digest_is_not_a_release(record: dict) -> None:
    with pytest.raises(records.ReleaseError, match="both"):
        records.manifest(record, ROOT / "params.yaml", image="ghcr.io/o/r", digest=None, commit="c")


def test_a_manifest_with_a_forged_digest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    model = {"bento_model": "m:1", "version": "1"}
    path.write_text(json.dumps({"release": "r", "bento": "b", "image": "i", "digest": "sha256:nope", "model": model}))
    with pytest.raises(records.ReleaseError, match="not an image digest"):
        records.read_manifest(path)
    path.write_text(json.dumps({"release": "r"}))
    with pytest.raises(records.ReleaseError, match=r"lacks bento, image, digest, model, model\.bento_model"):
        records.read_manifest(path)
    path.write_text(
        json.dumps(
            {
                "release": "r",
                "bento": "b",
                "image": "ghcr.io/o/r@" + DIGEST.replace("0", "f"),
                "digest": DIGEST,
                "model": model,
            }
        )
    )
    with pytest.raises(records.ReleaseError, match="is not the digest"):
        records.read_manifest(path)


def test_the_pushed_digest_is_read_from_buildx_metadata(tmp_path: Path) -> None:
    metadata = tmp_path / "buildx.json"
    metadata.write_text(json.dumps({"containerimage.digest": DIGEST, "image.name": "ghcr.io/o/r:v1"}))
    assert records.pushed_image(metadata, "ghcr.io/O/R") == {"image": f"ghcr.io/o/r@{DIGEST}", "digest": DIGEST}
    metadata.write_text(json.dumps({"image.name": "ghcr.io/o/r:v1"}))
    with pytest.raises(records.ReleaseError, match=r"no containerimage\.digest"):
        records.pushed_image(metadata, "ghcr.io/o/r")


def test_step_outputs_cannot_be_forged_by_a_line_break() -> None:
    assert records.step_outputs({"bento": "forkcast:v1", "image": None}) == "bento=forkcast:v1\nimage=\n"
    with pytest.raises(records.ReleaseError, match="line break"):
        records.step_outputs({"bento": "x\nimage=evil"})


def test_release_commands_without_a_build_say_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["release", "outputs"]) == 2
    assert main(["release", "image-plan", "--image", "ghcr.io/o/r"]) == 2
    assert main(["release", "manifest"]) == 2
    assert capsys.readouterr().err.count("run `forkcast build` first") == 3
    assert not (tmp_path / "outputs" / "release").exists()  # nothing half-written


def test_the_manifest_command_records_who_approved_production(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the production job runs once it has read the approvers (`forkcast release deployment`)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "build").mkdir(parents=True)
    (tmp_path / "outputs" / "build" / "build.json").write_bytes((built.output_dir / "build.json").read_bytes())
    (tmp_path / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    command = ["release", "manifest", "--image", "ghcr.io/o/r", "--digest", DIGEST, "--commit", "c0ffee",
               "--approved-by", "alice, bob"]  # fmt: skip
    assert main(command) == 0
    written = json.loads((tmp_path / "outputs" / "release" / "manifest.json").read_text())
    assert written["approved_by"] == "alice, bob"
    assert "| production approved by | @alice, @bob |" in (tmp_path / "outputs" / "release" / "manifest.md").read_text()
