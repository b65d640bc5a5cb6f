"""Build the bento: import the chosen model into the project's BentoML store, then build it offline.

The model comes from the pipeline's outputs (the default, refused when the gate rejected it)
or from an MLflow alias. The bento's version is `v<model version>-<content digest>`, so the
same model always gives the same tag and a rebuild of it is a no-op; its labels carry the
lineage. The golden cases (test rows with the pipeline's own predictions) travel inside the
model, for the service's ONNX check, and are written to `outputs/build/` for the smoke tests.

A bento may carry a second model, a challenger (`forkcast build --challenger`), imported as
`forkcast-challenger:<its version>-<digest>` and named in the bento's environment (FORKCAST_SHADOW_MODEL): the
service scores it in the shadow of the served model and logs both (serving/shadow.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import joblib
import numpy as np
import pandas as pd
import yaml

from forkcast import atomic, paths
from forkcast.data.declaration import Inputs
from forkcast.serving.contract import BENTO_MODEL_NAME, CHALLENGER_MODEL_NAME, MODEL_TAG_ENV, SHADOW_MODEL_ENV
from forkcast.serving.predictor import EXPECTED, GOLDEN_FILE, INPUTS_FILE, ONNX_FILE, PIPELINE_FILE

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

    from forkcast.config import Params

BENTOFILE = Path("bentofile.yaml")
BENTO_NAME = "forkcast"
BUILD_DIR = paths.OUTPUTS / "build"
BUILD_JSON = BUILD_DIR / "build.json"
GOLDEN_JSON = BUILD_DIR / "golden.json"
PROJECT_BENTOML_HOME = Path(".bentoml")
LABEL_KEYS = ("model_name", "model_version", "run_id", "data_hash", "git_commit", "gate")


class BuildError(Exception):
    """The model cannot be built into a bento (missing outputs, rejected by the gate, bad alias)."""


def use_project_store() -> Path:
    """Keep bentos and models in the project (unless BENTOML_HOME says otherwise).

    Must run before bentoml is imported: it reads the variable once.
    """
    home = Path(os.environ.setdefault("BENTOML_HOME", str(PROJECT_BENTOML_HOME.resolve())))
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    return home


@dataclass(frozen=True)
class ModelSource:
    pipeline: Pipeline
    pipeline_bytes: bytes
    onnx: bytes | None
    inputs: Inputs  # the input contract the model was trained with
    # model_name, model_version, run_id, data_hash, git_commit, trained_at, model_type, metrics (test and backtest),
    # checks_passed, gate, test_period
    lineage: dict[str, Any]


def inputs_of(metadata: dict[str, Any], where: str) -> Inputs:
    """The input contract a model's metadata records (the train stage writes it)."""
    if "inputs" not in metadata:
        raise BuildError(
            f"{where} records no input contract: the model predates dataset.yaml; retrain it (`dvc repro`)"
        )
    return Inputs.model_validate(metadata["inputs"])


def test_period(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The first and last time of the model's test split, where its metadata says (the replay's default window)."""
    test = (metadata.get("splits") or {}).get("test") or {}
    return {"start": test["start"], "end": test["end"]} if test.get("start") and test.get("end") else None


def from_pipeline_outputs(*, force: bool = False) -> ModelSource:
    """The model the last `dvc repro` refit and registered (outputs/served)."""
    from forkcast.data.validation import share_of_checks_passed

    required = (paths.SERVED_PICKLE, paths.SERVED_METADATA, paths.METRICS_JSON, paths.GATE_JSON)
    missing = [str(path) for path in required if not path.exists()]
    if missing:
        raise BuildError(f"missing pipeline outputs: {', '.join(missing)}. Run `make repro` (or `dvc repro`) first")
    gate = atomic.read_json(paths.GATE_JSON)
    metadata = atomic.read_json(paths.SERVED_METADATA)
    if gate.get("model_trained_at") != metadata.get("trained_at"):
        raise BuildError(
            f"{paths.GATE_JSON} judged another model than {paths.SERVED_PICKLE} (trained at "
            f"{gate.get('model_trained_at')}, not {metadata.get('trained_at')}): the register stage has not run "
            "since the refit. Run `dvc repro`"
        )
    if not gate["eligible"] and not force:
        raise BuildError(
            f"the quality gate rejected model version {gate['version']} ({paths.GATE_MD}); build it anyway with --force"
        )
    evaluation = atomic.read_json(paths.METRICS_JSON)
    metrics = {f"test_{key}": value for key, value in evaluation["model"].items()}
    pipeline_bytes = paths.SERVED_PICKLE.read_bytes()
    return ModelSource(
        pipeline=joblib.load(io.BytesIO(pipeline_bytes)),
        pipeline_bytes=pipeline_bytes,
        onnx=paths.SERVED_ONNX.read_bytes() if paths.SERVED_ONNX.exists() else None,
        inputs=inputs_of(metadata, str(paths.SERVED_METADATA)),
        lineage={
            "model_name": gate["model_name"],
            "model_version": str(gate["version"]),
            "run_id": gate["run_id"],
            "data_hash": metadata.get("data_hash"),
            "git_commit": metadata.get("git_commit"),
            "trained_at": metadata.get("trained_at"),
            "fitted_on": metadata.get("fitted_on"),  # the rows it learned (all of them when refit)
            "model_type": metadata.get("model_type"),
            "metrics": {**metrics, **backtest_metrics(paths.BACKTEST_JSON)},
            "checks_passed": share_of_checks_passed(paths.VALIDATION_JSON),
            "gate": "eligible" if gate["eligible"] else "rejected",
            "test_period": test_period(metadata),
        },
    )


def backtest_metrics(backtest_json: Path) -> dict[str, float]:
    """The backtest's spread, as the registry names it (`backtest_model_rmse_mean`, `..._std`): a release carries
    it so that its history says how steady the model was, not only its one test score."""
    if not backtest_json.exists():
        return {}
    summary = atomic.read_json(backtest_json).get("model") or {}
    return {
        f"backtest_model_{name}_{stat}": float(values[stat])
        for name, values in summary.items()
        for stat in ("mean", "std")
        if isinstance(values, dict) and values.get(stat) is not None
    }


def from_mlflow_alias(params: Params, alias: str) -> ModelSource:
    """A registered version by alias (e.g. `production`), with the ONNX export logged beside it."""
    return from_mlflow(params, alias=alias)


def from_mlflow(params: Params, *, alias: str | None = None, version: str | None = None) -> ModelSource:
    """A registered version, by alias or by number, with the ONNX export logged beside it."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from forkcast.model.history import run_checks_passed
    from forkcast.model.registry import use_tracking

    use_tracking(paths.LOCAL_MLFLOW_DIR, params.tracking.experiment)
    name = params.tracking.registered_model
    client = MlflowClient()
    try:
        if alias:
            found = client.get_model_version_by_alias(name, alias)
        else:
            found = client.get_model_version(name, str(version))
    except MlflowException as exc:
        which = f"has the alias '{alias}'" if alias else f"is numbered {version}"
        raise BuildError(f"no version of {name} {which}: {exc.message}") from exc
    pipeline = mlflow.sklearn.load_model(f"models:/{name}/{found.version}")
    run = client.get_run(str(found.run_id))
    with tempfile.TemporaryDirectory() as scratch:
        reports = Path(
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="reports", dst_path=scratch)
        )
        onnx_path = reports / ONNX_FILE
        onnx = onnx_path.read_bytes() if onnx_path.exists() else None
        metadata = atomic.read_json(reports / "metadata.json") if (reports / "metadata.json").exists() else {}
    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    tags = dict(found.tags or {})
    return ModelSource(
        pipeline=pipeline,
        pipeline_bytes=buffer.getvalue(),
        onnx=onnx,
        inputs=inputs_of(metadata, f"the metadata of {name} v{found.version}"),
        lineage={
            "model_name": name,
            "model_version": str(found.version),
            "run_id": run.info.run_id,
            "data_hash": tags.get("data_hash"),
            "git_commit": tags.get("git_commit"),
            "trained_at": metadata.get("trained_at"),
            "fitted_on": metadata.get("fitted_on"),
            "model_type": tags.get("model_type"),
            "checks_passed": run_checks_passed(run.info.run_id),
            "metrics": {
                key: value for key, value in run.data.metrics.items() if key.startswith(("test_", "backtest_model_"))
            },
            "gate": tags.get("gate", "unknown"),
            "test_period": test_period(metadata),
        },
    )


def from_bento_model(model_tag: str) -> ModelSource:
    """A model of the project's BentoML store (the one a bento serves, or its challenger), as it was built."""
    use_project_store()
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        model = bentoml.models.get(model_tag)
        directory = Path(model.path)
        pipeline_bytes = (directory / PIPELINE_FILE).read_bytes()
        inputs = Inputs.model_validate(atomic.read_json(directory / INPUTS_FILE))
    except (BentoMLException, OSError, ValueError) as exc:
        raise BuildError(f"no readable model {model_tag} in {os.environ['BENTOML_HOME']}: {exc}") from exc
    onnx_path = directory / ONNX_FILE
    return ModelSource(
        pipeline=joblib.load(io.BytesIO(pipeline_bytes)),
        pipeline_bytes=pipeline_bytes,
        onnx=onnx_path.read_bytes() if onnx_path.exists() else None,
        inputs=inputs,
        lineage={key: value for key, value in model.info.metadata.items() if key != "onnx_tolerance"},
    )


def check_challenger(source: ModelSource, challenger: ModelSource) -> None:
    """The challenger is fed the served model's requests: it must take no feature they lack, each typed alike."""
    served = {feature.name: feature.type for feature in source.inputs.features}
    missing = [f.name for f in challenger.inputs.features if f.name not in served]
    retyped = [f"{f.name} ({f.type}, served as {served[f.name]})" for f in challenger.inputs.features
               if f.name in served and served[f.name] != f.type]  # fmt: skip
    if missing or retyped:
        problems = ([f"takes {', '.join(missing)}, which requests to the served model lack"] if missing else []) + (
            [f"types {', '.join(retyped)} otherwise"] if retyped else []
        )
        raise BuildError(
            f"the challenger (model version {challenger.lineage.get('model_version')}) {' and '.join(problems)}: "
            "it could not score a single request. Pick a challenger trained on the same declaration of the data"
        )


def challenger_tag(challenger: ModelSource) -> str:
    """`forkcast-challenger:v<model version>-<digest of what it scores with>`: the same challenger, the same tag."""
    digest = hashlib.sha256(challenger.onnx if challenger.onnx is not None else challenger.pipeline_bytes)
    digest.update(challenger.inputs.model_dump_json().encode())
    version = challenger.lineage.get("model_version") or "unregistered"
    return f"{CHALLENGER_MODEL_NAME}:v{version}-{digest.hexdigest()[:12]}"


def golden_cases(source: ModelSource, test: pd.DataFrame, count: int) -> pd.DataFrame:
    """Rows spread evenly over the test period, with the pipeline's own (clipped) predictions."""
    names = list(source.inputs.names)
    missing = [name for name in names if name not in test.columns]
    if missing:
        raise BuildError(
            f"model version {source.lineage.get('model_version')} takes {', '.join(missing)}, which the prepared test "
            "data lacks: it was trained on another declaration of the data. Build the pipeline's model, or check "
            "out the data and dataset.yaml it was trained on and run `dvc repro` first"
        )
    positions = np.unique(np.linspace(0, len(test) - 1, num=min(count, len(test))).round().astype(int))
    golden = test.iloc[positions][names].reset_index(drop=True)
    golden[EXPECTED] = source.inputs.target.clip(source.pipeline.predict(golden[names]))
    return golden


def bento_version(source: ModelSource, golden: pd.DataFrame, resolved_bentofile: Path, source_dir: Path) -> str:
    """`v<model version>-<digest>`: the digest covers what is served (the model's bytes, golden cases, input
    contract, serving code, pinned packages), not the run or commit that produced it, so a retrain to the same model
    gives the same tag (and the registry the same version), and any change to what is served a new one."""
    digest = hashlib.sha256()
    # The ONNX bytes, where there are any, are the same whether the model came from the pipeline or MLflow.
    digest.update(source.onnx if source.onnx is not None else source.pipeline_bytes)
    digest.update(golden.to_csv(index=False).encode())
    digest.update(source.inputs.model_dump_json().encode())
    options = yaml.safe_load(resolved_bentofile.read_text())
    options.pop("labels", None)  # the lineage of the run that built it: not what is served
    digest.update(yaml.safe_dump(options, sort_keys=True).encode())
    for pattern in options.get("include", []):
        for path in sorted(source_dir.glob(pattern)):
            digest.update(path.relative_to(source_dir).as_posix().encode() + path.read_bytes())
    return f"v{source.lineage['model_version']}-{digest.hexdigest()[:12]}"


def pinned(packages: list[str]) -> list[str]:
    """The bento's packages and everything they need, each at the version installed here: the locked environment
    (`uv sync --locked`) the model was trained and tested with.

    BentoML's Dockerfile installs the bento's requirements as listed: with only the top-level packages pinned,
    every other version would come fresh from the index when the image is built. Markers are evaluated for this
    interpreter and platform (the image's Python is the same minor version; build images on Linux).
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    extras_of: dict[str, set[str]] = {}
    waiting = [Requirement(package) for package in packages]
    while waiting:
        requirement = waiting.pop()
        name = canonicalize_name(requirement.name)
        if name in extras_of and set(requirement.extras) <= extras_of[name]:
            continue
        extras = extras_of.setdefault(name, set())
        extras |= set(requirement.extras)
        for line in importlib_metadata.requires(name) or []:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras or {""}):
                waiting.append(dependency)
    return [f"{name}=={importlib_metadata.version(name)}" for name in sorted(extras_of)]


def resolve_bentofile(
    bentofile: Path, labels: dict[str, str], inputs: Inputs, output_dir: Path, *, shadow: str | None = None
) -> Path:
    """`bentofile.yaml` with every package pinned (transitive ones too), the lineage labels added, the dataset
    described and, with a challenger, its model tag in the bento's environment (`shadow`), as built."""
    options = yaml.safe_load(bentofile.read_text())
    image_python = str(options.get("docker", {}).get("python_version", ""))
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if image_python and image_python != running:
        # The pins are read from this environment: another Python can lock other versions (or other packages).
        raise BuildError(
            f"the image runs Python {image_python} ({bentofile}: docker.python_version) but this is Python {running}: "
            f"build with Python {image_python} (UV_PYTHON=python{image_python} make install), or change the image's"
        )
    options["python"]["packages"] = pinned(options["python"].get("packages", []))
    options["labels"] = {**options.get("labels", {}), **labels, "dataset": inputs.dataset}
    what = f"{inputs.dataset}: {inputs.target.name} ({inputs.target.unit}) per {inputs.frequency.period}"
    options["description"] = f"{options.get('description', 'Forkcast').rstrip('.')}. {what}."
    if shadow:  # an image sets it for the service; `forkcast deploy` sets it from the bento's models
        options["envs"] = [*options.get("envs", []), {"name": SHADOW_MODEL_ENV, "value": shadow}]
    resolved = output_dir / BENTOFILE.name
    atomic.write_text(resolved, yaml.safe_dump(options, sort_keys=False))
    return resolved


@dataclass(frozen=True)
class BuildResult:
    bento_tag: str
    model_tag: str
    reused: bool
    labels: dict[str, str]
    challenger_tag: str | None = None


def build(
    source: ModelSource,
    golden: pd.DataFrame,
    params: Params,
    *,
    bentofile: Path = BENTOFILE,
    source_dir: Path = Path("src"),
    output_dir: Path = BUILD_DIR,
    challenger: ModelSource | None = None,
) -> BuildResult:
    """Build (or reuse) the bento for this model (and a `challenger` scored in its shadow); write the build record and
    golden cases to `output_dir`."""
    use_project_store()
    import bentoml
    from bentoml.exceptions import NotFound

    if not bentofile.exists():
        raise BuildError(f"{bentofile} not found: run from the project's root directory")
    labels = {key: str(source.lineage.get(key) or "unknown") for key in LABEL_KEYS}
    shadow = None
    if challenger is not None:
        check_challenger(source, challenger)
        shadow = challenger_tag(challenger)
        labels["challenger_version"] = str(challenger.lineage.get("model_version") or "unknown")
    resolved = resolve_bentofile(bentofile, labels, source.inputs, output_dir, shadow=shadow)
    version = bento_version(source, golden, resolved, source_dir)
    model_tag = f"{BENTO_MODEL_NAME}:{version}"
    bento_tag = f"{BENTO_NAME}:{version}"
    try:
        bentoml.bentos.get(bento_tag)
        reused = True
        # The same model served the same way: the bento keeps the lineage of the run that first built it.
        first = bentoml.models.get(model_tag).info
        recorded = {key: value for key, value in first.metadata.items() if key in source.lineage}
        labels, source = dict(first.labels), replace(source, lineage={**source.lineage, **recorded})
    except NotFound:
        reused = False
        _import_model(model_tag, source, golden, params, labels)
        if challenger is not None and shadow is not None:
            challenger_labels = {key: str(challenger.lineage.get(key) or "unknown") for key in LABEL_KEYS}
            _import_model(shadow, challenger, challenger_golden(challenger, golden), params, challenger_labels)
        # The service's models, resolved at build: its class attributes name them, and the bento packs both.
        with mock.patch.dict(os.environ, {MODEL_TAG_ENV: model_tag, SHADOW_MODEL_ENV: shadow or ""}):
            # The service reads the tag when its module is imported: a second build in this process must
            # import it again, or it would package the first build's model.
            sys.modules.pop("forkcast.serving.service", None)
            bentoml.bentos.build_bentofile(str(resolved), version=version, build_ctx=str(source_dir))
    result = BuildResult(bento_tag, model_tag, reused, labels, shadow)
    _write_outputs(result, source, golden, params, output_dir, challenger=challenger)
    return result


def challenger_golden(challenger: ModelSource, golden: pd.DataFrame) -> pd.DataFrame:
    """The served model's golden rows with the challenger's own predictions: its ONNX check when the service loads
    it."""
    rows = golden[list(challenger.inputs.names)].copy()
    rows[EXPECTED] = challenger.inputs.target.clip(challenger.pipeline.predict(rows))
    return rows


@dataclass(frozen=True)
class BentoDescription:
    labels: dict[str, str]  # model version and lineage
    model: str  # the tag of the model it serves
    challenger: str | None = None  # the tag of the model scored in its shadow, if any


def describe(bento_tag: str) -> BentoDescription:
    """A bento in the project's store: its labels and its model."""
    use_project_store()
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        info = bentoml.bentos.get(bento_tag).info
    except BentoMLException as exc:
        raise BuildError(f"no bento {bento_tag} in {os.environ['BENTOML_HOME']}: run `forkcast build` first") from exc
    models = [str(model.tag) for model in info.all_models]
    challengers = [tag for tag in models if tag.split(":")[0] == CHALLENGER_MODEL_NAME]
    served = [tag for tag in models if tag not in challengers]
    if len(served) != 1 or len(challengers) > 1:
        raise BuildError(
            f"{bento_tag} holds {len(models)} models ({', '.join(models)}); a Forkcast bento holds one, and at most "
            f"one challenger ({CHALLENGER_MODEL_NAME}:...)"
        )
    return BentoDescription(dict(info.labels), served[0], challengers[0] if challengers else None)


def bento_of_version(version: str) -> str:
    """The bento built for model `version` (the newest, if it was built more than once): what a rollback deploys
    again, unchanged. BuildError naming the versions that have one when none does."""
    use_project_store()
    import bentoml

    built: dict[str, list[Any]] = {}
    for found in bentoml.bentos.list():
        if found.tag.name == BENTO_NAME:
            built.setdefault(str(found.info.labels.get("model_version")), []).append(found)
    if version not in built:
        known = ", ".join(sorted(built, key=lambda v: (len(v), v))) or "none"
        raise BuildError(f"no bento of model version {version} in this project's store (versions built: {known})")
    newest = max(built[version], key=lambda found: found.info.creation_time)
    return str(newest.tag)


def golden_of(bento_tag: str, tolerance: float) -> dict[str, Any]:
    """The known answers packed into a bento's model, in the form of `golden.json`."""
    import bentoml

    model = bentoml.models.get(describe(bento_tag).model)
    try:
        golden = pd.read_parquet(Path(model.path) / GOLDEN_FILE)
        inputs = Inputs.model_validate(atomic.read_json(Path(model.path) / INPUTS_FILE))
    except (OSError, ValueError) as exc:  # a bento built before models carried their contract, or a damaged one
        raise BuildError(f"{bento_tag} holds no readable known answers and input contract ({exc}): rebuild it") from exc
    return {
        **golden_record(golden, str(model.info.metadata.get("model_version")), tolerance, inputs),
        "bento_model": str(model.tag),
    }


def golden_record(golden: pd.DataFrame, model_version: str, tolerance: float, inputs: Inputs) -> dict[str, Any]:
    """Golden cases as the smoke tests read them (`smoke.Golden`), with the contract they test the requests of."""
    return {
        "model_version": model_version,
        "tolerance": tolerance,
        "records": golden[list(inputs.names)].to_dict(orient="records"),
        "expected": golden[EXPECTED].round(6).tolist(),
        "inputs": inputs.model_dump(mode="json"),
    }


def _import_model(
    model_tag: str, source: ModelSource, golden: pd.DataFrame, params: Params, labels: dict[str, str]
) -> None:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        bentoml.models.get(model_tag)
        return  # imported by an earlier build that stopped before the bento was saved
    except NotFound:
        pass
    # bentoml refuses None in metadata: an older version records no `fitted_on` or test period (read with .get()).
    recorded = {key: value for key, value in source.lineage.items() if value is not None}
    metadata = {**recorded, "onnx_tolerance": params.train.onnx_tolerance}
    with bentoml.models.create(model_tag, labels=labels, metadata=metadata) as model:
        directory = Path(model.path)
        (directory / PIPELINE_FILE).write_bytes(source.pipeline_bytes)
        if source.onnx is not None:
            (directory / ONNX_FILE).write_bytes(source.onnx)
        golden.to_parquet(directory / GOLDEN_FILE, index=False)
        atomic.write_json(directory / INPUTS_FILE, source.inputs.model_dump(mode="json"))


def _write_outputs(
    result: BuildResult, source: ModelSource, golden: pd.DataFrame, params: Params, output_dir: Path, *,
    challenger: ModelSource | None = None,
) -> None:  # fmt: skip
    golden_json = output_dir / GOLDEN_JSON.name
    atomic.write_json(
        golden_json, golden_record(golden, source.lineage["model_version"], params.smoke.tolerance, source.inputs)
    )
    atomic.write_json(
        output_dir / BUILD_JSON.name,
        {
            "bento": result.bento_tag,
            "model": result.model_tag,
            "labels": result.labels,
            "lineage": source.lineage,
            "golden_cases": str(golden_json),
            **({"challenger": result.challenger_tag, "challenger_lineage": challenger.lineage} if challenger else {}),
        },
    )
