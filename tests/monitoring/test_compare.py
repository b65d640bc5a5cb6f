"""`forkcast compare` on a date range of the real data: a registered version and a bento, genuinely different models,
judged with the right sign, by segment, with a confidence statement; a close call is no clear winner; an unknown name
is refused with the known ones. (The comparison read from a shadow challenger's log: tests/serving/test_shadow.py.)"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from forkcast import atomic, paths
from forkcast.cli import main
from forkcast.config import HistGradientBoostingParams, Params
from forkcast.data.prepare import Splits, write_splits
from forkcast.model.backtest import cycle_length
from forkcast.model.train import TrainedModel, train
from forkcast.monitoring import compare

from ..conftest import ROOT, Built, model_source

TEST_PERIOD = ["--from", "2011-11-07", "--to", "2011-12-31"]  # the test split: neither model trained on it


def with_max_iter(params: Params, max_iter: int) -> Params:
    settings = params.train.model_copy(update={"hist_gradient_boosting": HistGradientBoostingParams(max_iter=max_iter)})
    return params.model_copy(update={"train": settings})


@pytest.fixture(scope="module")
def weak(splits: Splits, params: Params) -> TrainedModel:
    """5 boosting iterations instead of 100: a genuinely worse model."""
    return train(with_max_iter(params, 5), splits.as_dict(), params.dataset.inputs(), data_hash="abc.dir")


@pytest.fixture
def project_outputs(in_tmp: Path, splits: Splits, params: Params) -> Path:
    """What `dvc repro` leaves that compare reads: the prepared rows and the backtest."""
    inputs = params.dataset.inputs()
    write_splits(splits, {name: paths.prepared_split(name) for name in paths.SPLITS}, inputs, paths.PREPARED_INPUTS)
    shutil.copytree(ROOT / "outputs" / "evaluation", in_tmp / "outputs" / "evaluation", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.csv"))  # fmt: skip
    return in_tmp


def register(model: TrainedModel, params: Params, alias: str, scratch: Path) -> str:
    """`model` as a registered version of the local store (.mlflow/), with its metadata, under `alias`."""
    import mlflow
    from mlflow import MlflowClient

    from forkcast.model.registry import trusted_types, use_tracking

    use_tracking(paths.LOCAL_MLFLOW_DIR, params.tracking.experiment)
    atomic.write_json(scratch / "metadata.json", model.metadata)
    with mlflow.start_run():
        mlflow.log_artifact(str(scratch / "metadata.json"), artifact_path="reports")
        info = mlflow.sklearn.log_model(
            model.pipeline, name="model", serialization_format="skops",
            skops_trusted_types=trusted_types(model.pipeline), registered_model_name=params.tracking.registered_model,
        )  # fmt: skip
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(params.tracking.registered_model, alias, version)
    return version


@pytest.mark.slow
@pytest.mark.integration
def test_the_better_model_wins_with_the_right_sign_by_segment_and_with_a_confidence_statement(
    built: Built, weak: TrainedModel, splits: Splits, params: Params, project_outputs: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    version = register(weak, params, "candidate", tmp_path)
    assert main(["compare", built.tag, "candidate", *TEST_PERIOD]) == 0
    report = json.loads((project_outputs / "outputs" / "compare" / "compare.json").read_text())
    verdict = report["verdict"]
    assert (verdict["winner"], verdict["clear"]) == ("champion", True)
    assert report["overall"]["challenger"]["rmse"] > 1.5 * report["overall"]["champion"]["rmse"]
    assert verdict["difference"] > verdict["backtest_std"] > 0  # the challenger's RMSE minus the champion's
    assert report["challenger"]["label"] == f"v{version} (candidate)"
    assert report["champion"]["label"].startswith(f"{built.tag} (model version 7)")
    assert {key: len(values) for key, values in report["segments"].items()} == {"workingday": 2, "hr": 24}
    # Week by week (the backtest's fold length) it wins nearly always: Thanksgiving week, new to both, went to the
    # weak model in the run this was written from.
    assert report["blocks"]["of"] == 8
    assert report["blocks"]["champion_won"] >= 6
    assert report["rows"]["compared"] == report["inputs"]["rows"] == len(splits.test)
    out = capsys.readouterr().out
    assert "The champion" in out
    assert "backtest standard deviations" in out
    markdown = (project_outputs / "outputs" / "compare" / "report.md").read_text()
    assert "### By hr" in markdown
    assert "### By workingday" in markdown

    assert main(["compare", f"v{version}", built.tag, *TEST_PERIOD]) == 0  # the other way round: the sign follows
    reversed_ = json.loads((project_outputs / "outputs" / "compare" / "compare.json").read_text())["verdict"]
    assert (reversed_["winner"], reversed_["difference"]) == ("challenger", -verdict["difference"])

    assert main(["compare", "v9", built.tag, *TEST_PERIOD]) == 2
    assert f"forkcast-demand v{version} (candidate)" in capsys.readouterr().err  # the known versions are named


def test_a_close_call_is_no_clear_winner(trained: TrainedModel, splits: Splits, params: Params) -> None:
    close = train(with_max_iter(params, 90), splits.as_dict(), params.dataset.inputs(), data_hash="abc.dir")
    sides = tuple(
        (compare.Side(label, label, {}), model_source(model, params, {}))
        for label, model in (("100 iterations", trained), ("90 iterations", close))
    )
    first, last = dt.date(2011, 11, 7), dt.date(2011, 12, 31)
    scored = compare.score_on_data(splits.test, sides, params.dataset.seasonal_keys, first, last)  # type: ignore[arg-type]
    spread = compare.backtest_spread(ROOT / paths.BACKTEST_JSON, "rmse")
    report = compare.compare(
        scored, sides[0][0], sides[1][0], keys=params.dataset.seasonal_keys, metric="rmse", spread=spread,
        unit="bikes", block_length=cycle_length(params.dataset.inputs().frequency) * 7,
    )  # fmt: skip
    verdict = report["verdict"]
    assert 0 < abs(verdict["difference"]) < (spread or 0)
    assert not verdict["clear"]
    assert "within one backtest standard deviation" in verdict["statement"]
    assert "not clearly" in compare.headline(report)


def test_an_unknown_version_is_refused_naming_the_known_ones(
    built: Built, params: Params, project_outputs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compare", "v9", built.tag, *TEST_PERIOD]) == 2
    error = capsys.readouterr().err
    assert "no model registry yet" in error
    assert built.tag in error
    assert not (project_outputs / ".mlflow").exists()  # a read-only command creates no registry
    assert main(["compare", "forkcast:v9-nothing", built.tag, *TEST_PERIOD]) == 2
    assert "no bento or model forkcast:v9-nothing" in capsys.readouterr().err
    assert not (project_outputs / "outputs" / "compare").exists()
