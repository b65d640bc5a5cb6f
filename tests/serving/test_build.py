"""Building the bento: which model gets in, and when a build is reused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from forkcast import atomic, paths
from forkcast.config import Params
from forkcast.data.declaration import load as load_dataset
from forkcast.data.prepare import Splits
from forkcast.model.train import TrainedModel, save
from forkcast.serving import build
from forkcast.serving.build import BuildError, ModelSource

from ..conftest import ROOT, Built, model_source


def version_of(source: ModelSource, golden: pd.DataFrame, tmp_path: Path, code: Path = ROOT / "src") -> str:
    resolved = build.resolve_bentofile(ROOT / "bentofile.yaml", {"model_version": "7"}, source.inputs, tmp_path)
    return build.bento_version(source, golden, resolved, code)


def test_the_same_model_and_code_give_the_same_tag_and_any_change_a_new_one(
    trained: TrainedModel, params: Params, tmp_path: Path
) -> None:
    inputs = params.dataset.inputs()
    golden = pd.DataFrame({"hr": [1, 2], "expected": [3.0, 4.0]})
    source = ModelSource(trained.pipeline, b"pipeline", trained.onnx, inputs, {"model_version": "7", "run_id": "r"})
    tag = version_of(source, golden, tmp_path)
    assert tag.startswith("v7-")
    # The same registered model loaded from MLflow pickles differently; its ONNX export is the same bytes.
    repickled = ModelSource(trained.pipeline, b"re-pickled", trained.onnx, inputs, source.lineage)
    assert version_of(repickled, golden, tmp_path) == tag
    assert version_of(source, golden.assign(expected=[3.0, 4.5]), tmp_path) != tag
    # Another run (or commit) that trained the same model builds the same bento: the tag covers what is served.
    other_run = ModelSource(trained.pipeline, b"pipeline", trained.onnx, inputs, {"model_version": "7", "run_id": "s"})
    assert version_of(other_run, golden, tmp_path) == tag
    relabelled = build.resolve_bentofile(
        ROOT / "bentofile.yaml", {"model_version": "7", "git_commit": "another"}, inputs, tmp_path / "relabelled"
    )
    assert build.bento_version(source, golden, relabelled, ROOT / "src") == tag
    wider = inputs.model_copy(update={"dataset": "renamed"})  # a change to the contract is a new bento
    assert (
        version_of(ModelSource(trained.pipeline, b"pipeline", trained.onnx, wider, source.lineage), golden, tmp_path)
        != tag
    )
    code = tmp_path / "src"
    shutil.copytree(ROOT / "src", code)
    assert version_of(source, golden, tmp_path, code) == tag
    with (code / "forkcast" / "serving" / "service.py").open("a") as service:
        service.write("\n# a change to the serving code\n")
    assert version_of(source, golden, tmp_path, code) != tag


def write_outputs(trained: TrainedModel, eligible: bool = True) -> None:
    save(trained, paths.SERVED_PICKLE, paths.SERVED_ONNX, paths.SERVED_METADATA)
    metrics = {"rmse": 50.0, "mae": 30.0, "r2": 0.8}
    atomic.write_json(paths.METRICS_JSON, {"model": metrics})
    gate = {
        "eligible": eligible, "model_name": "forkcast-demand", "version": "5", "run_id": "abc",
        "model_trained_at": trained.metadata["trained_at"],
    }  # fmt: skip
    atomic.write_json(paths.GATE_JSON, gate)


def test_the_pipeline_model_is_built_with_its_lineage(
    trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_outputs(trained)
    source = build.from_pipeline_outputs()
    assert source.lineage["model_version"] == "5"
    assert source.lineage["run_id"] == "abc"
    assert source.lineage["data_hash"] == trained.metadata["data_hash"]
    assert source.lineage["metrics"] == {"test_rmse": 50.0, "test_mae": 30.0, "test_r2": 0.8}
    assert source.lineage["checks_passed"] is None  # no validation report: unknown, not assumed
    assert source.lineage["model_type"] == trained.metadata["model_type"]
    # With the backtest and the data checks beside it, a release carries both (its history shows them).
    backtest = {"model": {"rmse": {"mean": 43.5, "std": 17.25}, "r2": {"mean": 0.78, "std": 0.2}}, "baseline": {}}
    atomic.write_json(paths.BACKTEST_JSON, backtest)
    atomic.write_json(paths.VALIDATION_JSON, {"summary": {"checks": 70, "share_of_checks_passed": 0.9857}})
    lineage = build.from_pipeline_outputs().lineage
    assert lineage["metrics"]["backtest_model_rmse_mean"] == 43.5
    assert lineage["metrics"]["backtest_model_r2_std"] == 0.2
    assert lineage["checks_passed"] == 0.9857
    assert source.onnx == trained.onnx
    assert source.inputs.names == tuple(trained.metadata["features"])  # the contract it was trained with
    test = trained.metadata["splits"]["test"]
    assert source.lineage["test_period"] == {"start": test["start"], "end": test["end"]}


def test_a_model_the_gate_rejected_needs_force(
    trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_outputs(trained, eligible=False)
    with pytest.raises(BuildError, match="the quality gate rejected model version 5"):
        build.from_pipeline_outputs()
    assert build.from_pipeline_outputs(force=True).lineage["gate"] == "rejected"


def test_a_verdict_on_another_model_is_refused(
    trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_outputs(trained)
    retrained = {**trained.metadata, "trained_at": "2031-01-01T00:00:00+00:00"}  # train ran again, register not
    atomic.write_json(paths.SERVED_METADATA, retrained)
    with pytest.raises(BuildError, match=r"judged another model.*the register stage has not run since the refit"):
        build.from_pipeline_outputs()


def test_missing_outputs_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuildError, match=r"missing pipeline outputs: outputs/served/model.joblib, .*gate.json"):
        build.from_pipeline_outputs()


def test_the_built_bento_carries_the_lineage_as_labels(built: Built) -> None:
    description = build.describe(built.tag)
    for key in ("model_version", "run_id", "data_hash", "git_commit", "gate"):
        assert description.labels[key] == str(built.lineage[key])
    assert description.model == f"forkcast-demand:{built.tag.split(':')[1]}"
    assert "FORKCAST_MODEL_TAG" not in os.environ  # the build set it for itself only
    with pytest.raises(BuildError, match="no bento forkcast:v0-missing"):
        build.describe("forkcast:v0-missing")


@pytest.mark.datasets
def test_golden_cases_span_the_test_period_with_the_pipelines_answers(
    trained: TrainedModel, built: Built, splits: Splits, params: Params
) -> None:
    golden = atomic.read_json(built.golden)
    assert len(golden["records"]) == len(golden["expected"]) == 50
    frame = pd.DataFrame(golden["records"])
    assert list(frame.columns) == list(params.dataset.feature_names)
    test_rows = splits.test[list(params.dataset.feature_names)]
    assert frame.iloc[0].tolist() == test_rows.iloc[0].tolist()  # from the first test row ...
    assert frame.iloc[-1].tolist() == test_rows.iloc[-1].tolist()  # ... to the last
    predicted = params.dataset.inputs().target.clip(trained.pipeline.predict(frame))
    assert predicted.tolist() == pytest.approx(golden["expected"], abs=1e-6)
    assert golden["inputs"] == params.dataset.inputs().model_dump(mode="json")  # the smoke tests' contract


def test_test_data_without_the_models_inputs_is_refused_by_name(
    trained: TrainedModel, splits: Splits, params: Params
) -> None:
    source = model_source(trained, params, {"model_version": "7"})
    dropped = params.dataset.feature_names[-1]
    with pytest.raises(BuildError, match=f"model version 7 takes {dropped}, which the prepared test data lacks"):
        build.golden_cases(source, splits.test.drop(columns=[dropped]), 10)


@pytest.mark.datasets
def test_the_bento_describes_its_dataset(built: Built, params: Params) -> None:
    import bentoml

    bento = bentoml.bentos.get(built.tag)
    assert bento.info.labels["dataset"] == params.dataset.name
    assert f"{params.dataset.target} ({params.dataset.unit}) per {params.dataset.time.frequency.period}" in bento.doc


def test_the_bento_pins_every_package_it_needs_at_the_locked_version(built: Built) -> None:
    """BentoML's Dockerfile installs the bento's requirements.txt as it is: a package left unpinned would be
    resolved afresh from the index when the image is built, not taken from uv.lock."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    name, _, version = built.tag.partition(":")
    bento = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version
    lines = [line for line in (bento / "env/python/requirements.txt").read_text().splitlines() if line.strip()]
    pins = {canonicalize_name(Requirement(line).name): str(Requirement(line).specifier) for line in lines}
    assert all(specifier.startswith("==") for specifier in pins.values()), lines
    assert len(pins) > 2 * len(yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"])
    for package, specifier in pins.items():
        assert specifier == f"=={importlib.metadata.version(package)}", package  # the locked environment's
        for line in importlib.metadata.requires(package) or []:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                assert canonicalize_name(dependency.name) in pins, f"{package} needs {dependency.name}: not pinned"


def test_a_build_on_another_python_than_the_images_is_refused(tmp_path: Path) -> None:
    """The pins are read from this environment: on another Python the lock can hold other versions."""
    options = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    options["docker"]["python_version"] = "3.99"
    bentofile = tmp_path / "bentofile.yaml"
    bentofile.write_text(yaml.safe_dump(options))
    inputs = load_dataset(ROOT / "dataset.yaml").inputs()
    with pytest.raises(BuildError, match=r"the image runs Python 3\.99 .* but this is Python 3\.\d+: build with"):
        build.resolve_bentofile(bentofile, {}, inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
