"""Journey 7, "make it work like January–February again", on the real data: a model trained on the first two months
is released; one trained on four months replaces it; `forkcast rollback --to` brings the first back through staging
and the same approval, nothing rebuilt, and production answers exactly as the first release did."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from forkcast import atomic
from forkcast.cli import main
from forkcast.config import Params
from forkcast.data.prepare import Splits, build_features, load_raw, split_by_time
from forkcast.model.registry import register_released
from forkcast.model.train import TrainedModel, train
from forkcast.serving import build

from ..conftest import build_bento, with_ports

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def first_months(data_file: Path, params: Params, months: int) -> Splits:
    """The data's first `months` calendar months, split as the pipeline splits."""
    frame = build_features(load_raw(data_file, params.dataset), params.dataset)
    start = frame["timestamp"].min()
    cutoff = (start + pd.DateOffset(months=months)).normalize()
    return split_by_time(frame[frame["timestamp"] < cutoff].reset_index(drop=True), params.split)


def release(params: Params, splits: Splits, project: Path, name: str) -> tuple[str, TrainedModel]:
    """Train on `splits`, register the model in the project's store and build its bento; the bento's tag."""
    model = train(params, splits.as_dict(), params.dataset.inputs(), data_hash=f"{name}.dir")
    metadata_file = project / f"{name}-metadata.json"
    atomic.write_json(metadata_file, model.metadata)
    version, _ = register_released(
        project / ".mlflow", params, pipeline=model.pipeline, metadata=model.metadata, onnx=model.onnx,
        release=name, released_at="2026-01-01T00:00:00+00:00", production=False, metadata_file=metadata_file,
    )  # fmt: skip
    lineage = {"model_name": params.tracking.registered_model, "model_version": version, "data_hash": f"{name}.dir"}
    tag = build_bento(model, splits, params, lineage=lineage, golden_cases=20, output_dir=project / name)
    return tag, model


def predict(url: str, records: list[dict[str, object]]) -> list[float]:
    body = json.dumps({"records": records}).encode()
    request = urllib.request.Request(f"{url}/predict", body, {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: list[float] = json.loads(response.read())["predictions"]
    return answer


def ship(tag: str) -> None:
    """Staging, its smoke tests, then production with an approval: the release line, locally."""
    assert main(["deploy", "--env", "staging", "--bento", tag]) == 0
    assert main(["smoke", "--env", "staging"]) == 0
    assert main(["deploy", "--env", "production", "--approve"]) == 0


def test_production_goes_back_to_the_january_february_model_and_answers_exactly_as_it_did(
    data_file: Path, params: Params, in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FORKCAST_WORKERS", "1")  # one worker per server: the answers, not the throughput
    with_ports(in_tmp)
    january_february, _ = release(params, first_months(data_file, params, 2), in_tmp, "jan-feb")
    january_april, _ = release(params, first_months(data_file, params, 4), in_tmp, "jan-apr")
    golden = build.golden_of(january_february, params.smoke.tolerance)
    old_version = build.describe(january_february).labels["model_version"]
    try:
        ship(january_february)
        production = json.loads((in_tmp / "outputs" / "deploy" / "production.json").read_text())["url"]
        first_answers = predict(production, golden["records"])
        ship(january_april)
        assert predict(production, golden["records"]) != pytest.approx(first_answers)  # another model now
        assert main(["rollback", "--to", "99"]) == 2
        assert "no bento of model version 99" in capsys.readouterr().err
        assert main(["rollback", "--to", old_version]) == 0  # staging, and its smoke tests
        rolled = capsys.readouterr().out
        assert f"rolling back to model version {old_version}: {january_february}" in rolled
        assert main(["deploy", "--env", "production"]) == 1  # the same approval as any release
        assert main(["deploy", "--env", "production", "--approve"]) == 0
        assert main(["smoke", "--env", "production"]) == 0  # the first release's own known answers
        assert predict(production, golden["records"]) == first_answers  # exactly, not approximately
        assert json.loads((in_tmp / "outputs" / "deploy" / "production.json").read_text())["bento"] == january_february
    finally:
        main(["undeploy"])
    capsys.readouterr()
    assert main(["history", "--json"]) == 0
    listed = {entry["version"]: entry for entry in json.loads(capsys.readouterr().out)}
    old = listed[old_version]
    assert old["aliases"] == ["production"]  # the registry says so ...
    assert old["data_hash"] == "jan-feb.dir"
    # ... and so does the history: released, replaced, then released again.
    assert [(d["environment"], d["bento"]) for d in old["deployments"]] == [
        ("staging", january_february), ("production", january_february),
        ("staging", january_february), ("production", january_february),
    ]  # fmt: skip
    newer = next(entry for version, entry in listed.items() if version != old_version)
    assert [d["environment"] for d in newer["deployments"]] == ["staging", "production"]
