"""The backtest stage: a rolling-origin backtest, so one odd week does not decide what is released.

The last `backtest.folds` blocks of `backtest.fold_cycles` natural cycles are each in turn the test; the model is
fitted with the same settings on every row before the block (an expanding window, as it would have been trained
then), and the naive seasonal baseline is fitted on the same rows. Each metric gets its mean and spread over the
folds; the quality gate compares those means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forkcast import atomic
from forkcast.config import BacktestParams, TrainParams
from forkcast.data.declaration import Frequency, Inputs
from forkcast.model.estimator import fit, predict
from forkcast.model.metrics import regression_metrics, seasonal_baseline

METRICS = ("rmse", "mae", "r2")


class BacktestError(ValueError):
    """The data is too short for the declared backtest, or a fold cannot be scored."""


@dataclass(frozen=True)
class Fold:
    start: pd.Timestamp  # first time in the fold
    end: pd.Timestamp  # first time after it

    def label(self) -> str:
        last = self.end - pd.Timedelta(days=1)
        return f"{self.start:%Y-%m-%d}..{last:%Y-%m-%d}"


def cycle_length(frequency: Frequency) -> pd.Timedelta:
    """A day of sub-daily rows, a week of daily rows, 52 weeks of weekly rows."""
    return pd.Timedelta(days=1 if frequency.sub_daily else 7 if frequency.minutes == 1_440 else 364)


def make_folds(stamps: pd.Series, frequency: Frequency, params: BacktestParams) -> list[Fold]:
    """The last `folds` blocks of `fold_cycles` cycles, ending with the newest row's day, each with at least one
    fold's length of data before it: fewer folds when the data is short (at least 2); empty blocks are dropped."""
    stop = stamps.max().normalize() + pd.Timedelta(days=1)
    length_days = cycle_length(frequency).days * params.fold_cycles
    room = (stop - stamps.min().normalize()).days // length_days - 1  # folds with a fold's length of data before
    count = min(params.folds, room)
    if count < 2:
        raise BacktestError(
            f"the data ({stamps.min():%Y-%m-%d}..{stamps.max():%Y-%m-%d}) is too short for a backtest of 2 folds of "
            f"{params.fold_cycles} {frequency.cycle}s with a fold's length of training before them: lower "
            "backtest.fold_cycles in params.yaml, or add data"
        )
    length = pd.Timedelta(days=length_days)
    folds = [Fold(stop - length * (count - i), stop - length * (count - i - 1)) for i in range(count)]
    kept = [fold for fold in folds if ((stamps >= fold.start) & (stamps < fold.end)).any()]
    if len(kept) < 2:
        raise BacktestError(f"only {len(kept)} of the {params.folds} backtest folds hold any rows: the data has gaps")
    return kept


def in_fold(frame: pd.DataFrame, fold: Fold) -> pd.Series:
    return (frame["timestamp"] >= fold.start) & (frame["timestamp"] < fold.end)


def summarise(per_fold: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each metric's mean and (sample) standard deviation over the folds."""
    summary = {}
    for name in METRICS:
        values = np.array([fold[name] for fold in per_fold], dtype=float)
        spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[name] = {"mean": round(float(values.mean()), 4), "std": round(spread, 4)}
    return summary


Scorer = Callable[[pd.DataFrame, pd.DataFrame], pd.Series]  # (rows before the fold, the fold) -> predictions


def score_folds(data: pd.DataFrame, folds: Sequence[Fold], target: str, scorer: Scorer) -> list[dict[str, float]]:
    results = []
    for fold in folds:
        inside = in_fold(data, fold)
        history, test = data[data["timestamp"] < fold.start], data[inside]
        results.append(regression_metrics(test[target], scorer(history, test)))
    return results


def refit_scorer(settings: TrainParams, inputs: Inputs) -> Scorer:
    """Fit these settings on the rows before each fold, then predict the fold."""

    def score(history: pd.DataFrame, test: pd.DataFrame) -> pd.Series:
        return predict(fit(settings, history, inputs), test, inputs.target)

    return score


def baseline_scorer(target: str, seasonal_keys: Sequence[str]) -> Scorer:
    return lambda history, test: seasonal_baseline(history, target, test, seasonal_keys)


def backtest(
    settings: TrainParams, data: pd.DataFrame, inputs: Inputs, folds: Sequence[Fold], *,
    seasonal_keys: Sequence[str], progress: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:  # fmt: skip
    """The model's settings and the seasonal baseline, fold by fold, with each metric's mean and spread."""
    target = inputs.target.name
    model_scorer, base = refit_scorer(settings, inputs), baseline_scorer(target, seasonal_keys)
    rows: list[dict[str, Any]] = []
    for number, fold in enumerate(folds, start=1):
        history, test = data[data["timestamp"] < fold.start], data[in_fold(data, fold)]
        model = regression_metrics(test[target], model_scorer(history, test))
        baseline = regression_metrics(test[target], base(history, test))
        rows.append(
            {"fold": fold.label(), "start": fold.start.isoformat(), "end": fold.end.isoformat(),
             "train_rows": len(history), "test_rows": len(test), "model": model, "baseline": baseline}
        )  # fmt: skip
        progress(
            f"  fold {number}/{len(folds)} {fold.label()}: RMSE {model['rmse']:.4g} (baseline {baseline['rmse']:.4g})"
        )
    model_summary = summarise([row["model"] for row in rows])
    baseline_summary = summarise([row["baseline"] for row in rows])
    baseline_rmse = baseline_summary["rmse"]["mean"]
    improvement = 1.0 - model_summary["rmse"]["mean"] / baseline_rmse if baseline_rmse > 0 else 0.0
    return {
        "folds": rows,
        "model": model_summary,
        "baseline": baseline_summary,
        "rmse_improvement_over_baseline": round(improvement, 4),
        "recipe": settings.recipe(),
    }


def all_rows(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Train, validation and test again as one table in time order (the backtest's and the refit's rows)."""
    frames = [splits[name] for name in ("train", "validation", "test")]
    return pd.concat(frames, ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)


def fold_table(result: dict[str, Any]) -> pd.DataFrame:
    """One row per fold, for the plot: the model's and the baseline's RMSE and MAE."""
    return pd.DataFrame(
        [
            {"fold": row["fold"], "model_rmse": row["model"]["rmse"], "baseline_rmse": row["baseline"]["rmse"],
             "model_mae": row["model"]["mae"], "baseline_mae": row["baseline"]["mae"]}
            for row in result["folds"]
        ]
    )  # fmt: skip


def save(result: dict[str, Any], json_path: Path, csv_path: Path) -> None:
    atomic.write_atomic(csv_path, lambda tmp: fold_table(result).to_csv(tmp, index=False))
    atomic.write_json(json_path, result)  # last: its presence means the stage finished
