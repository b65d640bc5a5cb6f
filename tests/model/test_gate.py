"""The quality gate: floors that do not move (the baseline, production, the best recent release), judged on the
backtest's folds, and released models compared like with like."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pytest

from forkcast.config import BacktestParams, GateParams, HistGradientBoostingParams, Params
from forkcast.data.declaration import Feature
from forkcast.data.prepare import Splits
from forkcast.model.backtest import BacktestError, all_rows, backtest, cycle_length, make_folds, summarise
from forkcast.model.gate import Released, Scored, judge, recipe_of, render_markdown, score_released
from forkcast.model.refit import refit
from forkcast.model.train import TrainedModel


def backtest_of(model: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """A backtest.json with these per-fold RMSEs (MAE the same, R² unused)."""
    folds = [
        {"model": {"rmse": m, "mae": m, "r2": 0.5}, "baseline": {"rmse": b, "mae": b, "r2": 0.3}}
        for m, b in zip(model, baseline, strict=True)
    ]
    return {
        "folds": folds,
        "model": summarise([f["model"] for f in folds]),
        "baseline": summarise([f["baseline"] for f in folds]),
    }


def everywhere(values: Sequence[float], how: str = "(on the same folds)") -> Scored:
    return Scored(tuple(range(len(values))), tuple(values), how)


GATE = GateParams(metric="rmse", tolerance=0.05, min_improvement_over_baseline=0.05)


@pytest.mark.parametrize(("model", "eligible"), [(94.0, True), (95.0, True), (95.2, False), (120.0, False)])
def test_the_baseline_is_a_floor_even_for_the_first_model(model: float, eligible: bool) -> None:
    verdict = judge(GATE, "1", backtest_of([model, model], [100.0, 100.0]), production=None)
    assert verdict.eligible is eligible
    assert verdict.comparisons[0].against == "the seasonal baseline"
    assert verdict.comparisons[0].allowed == pytest.approx(95.0)
    assert "no production model yet" in verdict.reason


@pytest.mark.parametrize(
    ("candidate", "eligible", "words"),
    [(50.0, True, "the same"), (52.4, True, "4.8% worse"), (52.6, False, "5.2% worse"), (40.0, True, "20.0% better")],
)
def test_production_allows_at_most_the_tolerance(candidate: float, eligible: bool, words: str) -> None:
    verdict = judge(GATE, "2", backtest_of([candidate] * 2, [99.0] * 2), production=("1", everywhere([50.0, 50.0])))
    assert verdict.eligible is eligible
    assert verdict.production is not None
    assert verdict.production.allowed == pytest.approx(52.5)
    assert words in verdict.production.sentence("rmse")


def test_exactly_at_the_tolerance_passes_despite_float_rounding() -> None:
    # 100 * 1.15 is 114.99999999999999 in floating point.
    gate = GATE.model_copy(update={"tolerance": 0.15})
    verdict = judge(gate, "2", backtest_of([115.0], [200.0]), production=("1", everywhere([100.0])))
    assert verdict.eligible


def test_a_chain_of_small_steps_down_is_stopped_by_the_recent_releases() -> None:
    """v1 43.8, v2 45.4 (3.7% worse: allowed, released), v3 47.5: 4.7% worse than production v2, but 8.4% worse
    than v1, one of the recent releases: refused, and the verdict names v1."""
    history = [("2", everywhere([45.4, 45.4])), ("1", everywhere([43.8, 43.8]))]
    verdict = judge(GATE, "3", backtest_of([47.5, 47.5], [62.0, 62.0]), ("2", history[0][1]), history)
    assert not verdict.eligible
    passed = {c.against: c.passed for c in verdict.comparisons}
    assert passed == {
        "the seasonal baseline": True,
        "production v2": True,
        "release v1, one of the last 2": False,
    }
    assert "FAILS: rmse 47.5 vs release v1, one of the last 2 43.8 (8.4% worse" in verdict.reason


def test_every_recent_release_is_named_and_production_once() -> None:
    history = [("3", everywhere([40.0])), ("2", "records settings this code cannot retrain"), ("1", everywhere([43.8]))]
    verdict = judge(GATE, "4", backtest_of([41.0], [62.0]), ("3", history[0][1]), history)
    assert [c.against for c in verdict.comparisons] == [
        "the seasonal baseline", "production v3", "release v1, one of the last 3",
    ]  # fmt: skip
    assert verdict.notes == ("release v2 records settings this code cannot retrain: not compared",)
    assert verdict.eligible


def test_a_reference_scored_on_some_folds_is_compared_on_those_folds_only() -> None:
    """The candidate's mean over the same folds: 30 on the last fold, not 60 over both."""
    unseen = Scored((1,), (31.0,), "(on the last fold only)")
    verdict = judge(GATE, "2", backtest_of([90.0, 30.0], [200.0, 200.0]), production=("1", unseen))
    assert verdict.production is not None
    assert verdict.production.candidate == pytest.approx(30.0)
    assert verdict.production.folds == 1
    assert verdict.eligible


def test_a_production_model_of_other_data_is_named_not_compared() -> None:
    """After another dataset is swapped in, production cannot score the new rows: a note, the baseline still judges."""
    why = "was trained on inputs the data no longer has (hr)"
    verdict = judge(GATE, "4", backtest_of([0.4], [0.5]), production=("3", why))
    assert verdict.eligible
    assert verdict.production is None
    assert verdict.notes == (f"production v3 {why}: not compared",)
    worse = judge(GATE, "4", backtest_of([0.6], [0.5]), production=("3", why))
    assert not worse.eligible


def test_the_gate_uses_the_configured_metric() -> None:
    backtest_result = backtest_of([31.0], [100.0])
    backtest_result["folds"][0]["model"]["rmse"] = 1.0
    verdict = judge(GATE.model_copy(update={"metric": "mae", "tolerance": 0.0}), "2", backtest_result,
                    production=("1", everywhere([30.0])))  # fmt: skip
    assert not verdict.eligible
    assert verdict.metric == "mae"


def test_the_markdown_shows_every_comparison_and_its_result() -> None:
    history = [("2", everywhere([45.4])), ("1", everywhere([43.8]))]
    verdict = judge(GATE, "3", backtest_of([47.5, 47.6], [62.0, 63.0]), ("2", history[0][1]), history)
    text = render_markdown(verdict, "Model `m` version 3.", "bikes")
    assert "# Quality gate: REJECTED" in text
    assert "| release v1, one of the last 2 | 47.5 | 43.8 | 45.99 | 1 | **FAIL** |" in text
    assert "mean ± standard deviation over 2 folds" in text


# On the real data: the backtest, and released models scored like with like.


@pytest.fixture(scope="module")
def rows(splits: Splits) -> pd.DataFrame:
    return all_rows(splits.as_dict())


@pytest.fixture(scope="module")
def folds(rows: pd.DataFrame, params: Params) -> list[Any]:
    return make_folds(rows["timestamp"], params.dataset.inputs().frequency, params.backtest)


@pytest.mark.datasets
def test_the_backtest_folds_are_the_last_weeks_each_trained_on_every_earlier_row(
    rows: pd.DataFrame, folds: list[Any], params: Params
) -> None:
    inputs = params.dataset.inputs()
    result = backtest(params.train, rows, inputs, folds, seasonal_keys=params.dataset.seasonal_keys)
    assert len(result["folds"]) == params.backtest.folds
    last = result["folds"][-1]
    assert pd.Timestamp(last["end"]) == rows["timestamp"].max().normalize() + pd.Timedelta(days=1)
    for fold in result["folds"]:
        assert (
            pd.Timestamp(fold["end"]) - pd.Timestamp(fold["start"])
            == cycle_length(inputs.frequency) * params.backtest.fold_cycles
        )
        assert fold["train_rows"] == int((rows["timestamp"] < pd.Timestamp(fold["start"])).sum())
    assert sum(f["test_rows"] for f in result["folds"]) == int((rows["timestamp"] >= folds[0].start).sum())
    # The defaults beat the baseline on the mean of the folds, with room above the 5% floor.
    assert result["rmse_improvement_over_baseline"] > 0.15


@pytest.mark.bikes
def test_a_deliberately_weakened_model_is_refused_against_the_baseline(
    rows: pd.DataFrame, folds: list[Any], params: Params
) -> None:
    weak = params.train.model_copy(update={"hist_gradient_boosting": HistGradientBoostingParams(max_iter=1)})
    result = backtest(weak, rows, params.dataset.inputs(), folds, seasonal_keys=params.dataset.seasonal_keys)
    verdict = judge(params.gate, "2", result, production=None)
    assert not verdict.eligible
    assert verdict.comparisons[0].against == "the seasonal baseline"
    assert not verdict.comparisons[0].passed


def test_a_backtest_longer_than_the_data_keeps_the_folds_that_fit_or_says_what_to_change(
    rows: pd.DataFrame, params: Params
) -> None:
    frequency = params.dataset.inputs().frequency
    fitted = make_folds(rows["timestamp"], frequency, BacktestParams(folds=52, fold_cycles=7))
    assert len(fitted) == 51  # 365 days: 52 weeks, the first of them kept for training
    assert (rows["timestamp"] < fitted[0].start).sum() >= 7 * 24 - 30  # a week of hours before it (gaps allowed)
    with pytest.raises(BacktestError, match=r"too short for a backtest of 2 folds of 200 days.*backtest.fold_cycles"):
        make_folds(rows["timestamp"], frequency, BacktestParams(folds=2, fold_cycles=200))


@pytest.mark.bikes
def test_released_models_are_compared_like_with_like_on_the_candidate_s_folds(
    trained: TrainedModel, splits: Splits, rows: pd.DataFrame, folds: list[Any], params: Params
) -> None:
    """Never as they are (a refit model learned the folds, an older one knows fewer weeks): their settings and
    inputs are retrained on the same folds, once per setting."""
    inputs = params.dataset.inputs()
    candidate = [1.0] * len(folds)
    kwargs: dict[str, Any] = {"settings": params.train, "candidate_values": candidate, "metric": "rmse"}
    refitted = refit(params, splits.as_dict(), inputs, trained, data_hash=None)

    # The candidate's own settings and inputs: the candidate's folds stand, nothing is refitted.
    retrained: dict[str, list[float]] = {}
    same = score_released(Released("2", refitted.metadata), folds, rows, inputs, retrained=retrained, **kwargs)
    assert isinstance(same, Scored)
    assert same.values == tuple(candidate)
    assert same.fold_indices == tuple(range(len(folds)))
    assert "the same result" in same.how
    assert retrained == {}

    # Other settings are retrained on the same folds, once per setting.
    other = {**refitted.metadata, "hyperparameters": {**refitted.metadata["hyperparameters"], "max_iter": 30}}
    first = score_released(Released("3", other), folds, rows, inputs, retrained=retrained, **kwargs)
    again = score_released(Released("4", other), folds, rows, inputs, retrained=retrained, **kwargs)
    assert isinstance(first, Scored)
    assert "retrained on the same" in first.how
    assert len(retrained) == 1
    assert again == first
    fewer_iterations = backtest(params.train.with_recipe(recipe_of(other)), rows, inputs, folds,
                                seasonal_keys=params.dataset.seasonal_keys)  # fmt: skip
    assert list(first.values) == [fold["model"]["rmse"] for fold in fewer_iterations["folds"]]

    # The same settings on other inputs (the declaration changed since): retrained with its own inputs.
    fewer = inputs.model_copy(update={"features": tuple(f for f in inputs.features if f.name != "windspeed")})
    narrower = {**refitted.metadata, "inputs": fewer.model_dump(mode="json"), "features": list(fewer.names)}
    own = score_released(Released("5", narrower), folds, rows, inputs, retrained=retrained, **kwargs)
    assert isinstance(own, Scored)
    assert "and inputs retrained on the same" in own.how
    assert len(retrained) == 2

    # What cannot be retrained is said, not guessed: inputs the data lacks, settings this code no longer knows.
    wider = inputs.model_copy(update={"features": (*inputs.features, Feature(name="dteday", type="str"))})
    foreign = {**refitted.metadata, "inputs": wider.model_dump(mode="json")}
    why = score_released(Released("6", foreign), folds, rows, inputs, retrained={}, **kwargs)
    assert why == "was trained on inputs the data no longer has (dteday)"
    renamed = {**refitted.metadata, "hyperparameters": {"max_iterations": 100}}
    why = score_released(Released("7", renamed), folds, rows, inputs, retrained={}, **kwargs)
    assert isinstance(why, str)
    assert why.startswith("records settings this code cannot retrain (ValidationError")
