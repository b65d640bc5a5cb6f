"""The quality gate: floors that do not move, judged on the backtest's folds.

A candidate is eligible only when its mean backtest error
- beats the naive seasonal baseline on the same folds by `gate.min_improvement_over_baseline`,
- is within `gate.tolerance` of production's, and
- is within `gate.tolerance` of each of the last `gate.releases_compared` production releases, so a chain of
  small steps down (each within the tolerance of the one before) is stopped.

Released models are compared like with like: their settings (and inputs) are retrained on the candidate's own
folds, each fold on every earlier row, exactly as the candidate's were. Scoring a released model as it is would be
unfair either way: a refit model has learned the folds' rows, and an older one knows fewer weeks than the
candidate's fold models did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from forkcast.config import GateParams, TrainParams
from forkcast.data.declaration import Inputs
from forkcast.model.backtest import Fold, refit_scorer, score_folds

PASS_SLACK = 1e-9  # exactly at a bound passes, whatever the float rounding


def recipe_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """A model's settings as its metadata.json records them, in the shape of `TrainParams.recipe()`."""
    return {"model": metadata["model_type"], "seed": metadata["seed"], "hyperparameters": metadata["hyperparameters"]}


@dataclass(frozen=True)
class Released:
    """A model production served: its registry version and its metadata.json (its settings and inputs)."""

    version: str
    metadata: dict[str, Any]

    @property
    def recipe(self) -> dict[str, Any]:
        return recipe_of(self.metadata)

    def inputs_or(self, current: Inputs) -> Inputs:
        """The input contract it was trained with (its metadata records it), else the current one."""
        recorded = self.metadata.get("inputs")
        return Inputs.model_validate(recorded) if recorded else current


@dataclass(frozen=True)
class Scored:
    """A reference's error on some of the backtest's folds, and how it was obtained."""

    fold_indices: tuple[int, ...]
    values: tuple[float, ...]
    how: str


@dataclass(frozen=True)
class Comparison:
    against: str  # "the seasonal baseline", "production v3", "release v2, one of the last 5"
    how: str
    folds: int
    candidate: float  # the candidate's mean error on those folds
    reference: float
    allowed: float
    passed: bool

    def sentence(self, metric: str) -> str:
        if self.reference > 0:
            change = self.candidate / self.reference - 1.0
            relation = "the same" if abs(change) < 5e-4 else f"{abs(change):.1%} {'worse' if change > 0 else 'better'}"
        else:
            relation = "the same" if self.candidate == self.reference else "worse than a perfect model"
        word = "passes" if self.passed else "FAILS"
        return (
            f"{word}: {metric} {self.candidate:.4g} vs {self.against} {self.reference:.4g} ({relation}; at most "
            f"{self.allowed:.4g} allowed) {self.how}"
        )


@dataclass(frozen=True)
class GateVerdict:
    eligible: bool
    metric: str
    candidate_version: str
    candidate_value: float  # mean over the backtest's folds
    candidate_spread: float  # their standard deviation
    folds: int
    comparisons: tuple[Comparison, ...]
    notes: tuple[str, ...] = field(default=())  # references that could not be compared, and why
    reason: str = ""
    unchanged: bool = False  # the candidate is production's own model: nothing to release

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def production(self) -> Comparison | None:
        return next((c for c in self.comparisons if c.against.startswith("production")), None)


def score_released(
    released: Released, folds: Sequence[Fold], data: pd.DataFrame, inputs: Inputs, *, settings: TrainParams,
    candidate_values: Sequence[float], metric: str, retrained: dict[str, list[float]],
) -> Scored | str:  # fmt: skip
    """`released`'s settings and inputs retrained on the candidate's folds, or why it cannot be compared."""
    try:
        own, recipe = released.inputs_or(inputs), released.recipe
        retrainable = settings.with_recipe(recipe)
    except (KeyError, TypeError, ValueError) as exc:  # metadata of an older release, or settings renamed since
        return f"records settings this code cannot retrain ({type(exc).__name__}: {exc})"
    missing = [name for name in own.names if name not in data.columns]
    if missing:
        return f"was trained on inputs the data no longer has ({', '.join(missing)})"
    everything = tuple(range(len(folds)))
    if recipe == settings.recipe() and own.names == inputs.names:
        how = f"(its settings and inputs are the candidate's: the same {len(folds)} folds give the same result)"
        return Scored(everything, tuple(candidate_values), how)
    key = json.dumps([recipe, own.names], sort_keys=True)
    if key not in retrained:
        scorer = refit_scorer(retrainable, own)
        retrained[key] = [m[metric] for m in score_folds(data, folds, inputs.target.name, scorer)]
    how = f"(its settings ({recipe['model']}) and inputs retrained on the same {len(folds)} folds)"
    return Scored(everything, tuple(retrained[key]), how)


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def judge(
    gate: GateParams,
    candidate_version: str,
    backtest: dict[str, Any],
    production: tuple[str, Scored | str] | None,
    history: Sequence[tuple[str, Scored | str]] = (),
) -> GateVerdict:
    """The verdict on the candidate's backtest (`backtest.json`), given production's and the recent releases'
    scores on the same folds (or why they could not be scored)."""
    metric = gate.metric
    candidate_values = [fold["model"][metric] for fold in backtest["folds"]]
    count = len(candidate_values)
    mean = backtest["model"][metric]["mean"]
    baseline = backtest["baseline"][metric]["mean"]
    allowed = baseline * (1.0 - gate.min_improvement_over_baseline)
    required = f"(on the same {count} folds; at least {gate.min_improvement_over_baseline:.0%} better required)"
    comparisons = [
        Comparison("the seasonal baseline", required, count, mean, baseline, allowed, mean <= allowed + PASS_SLACK)
    ]
    notes: list[str] = []

    def against(label: str, scored: Scored) -> Comparison:
        candidate = _mean([candidate_values[i] for i in scored.fold_indices])
        reference = _mean(scored.values)
        bound = reference * (1.0 + gate.tolerance)
        return Comparison(label, scored.how, len(scored.fold_indices), candidate, reference, bound,
                          candidate <= bound + PASS_SLACK)  # fmt: skip

    if production is None:
        notes.append("no production model yet: nothing to compare with but the baseline")
    elif isinstance(production[1], str):
        notes.append(f"production v{production[0]} {production[1]}: not compared")
    else:
        comparisons.append(against(f"production v{production[0]}", production[1]))
    production_version = production[0] if production else None
    for version, scored in history:  # every recent release, so the sum of small steps down is bounded
        if version == production_version:
            continue
        if isinstance(scored, str):
            notes.append(f"release v{version} {scored}: not compared")
        else:
            comparisons.append(against(f"release v{version}, one of the last {len(history)}", scored))
    eligible = all(c.passed for c in comparisons)
    head = "eligible" if eligible else "not eligible"
    reason = f"{head}: " + "; ".join(c.sentence(metric) for c in comparisons)
    if notes:
        reason += "; " + "; ".join(notes)
    return GateVerdict(
        eligible, metric, candidate_version, mean, backtest["model"][metric]["std"], count,
        tuple(comparisons), tuple(notes), reason,
    )  # fmt: skip


def comparison_table(verdict: dict[str, Any]) -> list[str]:
    """Every comparison of a verdict (as gate.json records it) as Markdown table rows: what, how, pass or fail."""
    metric = verdict["metric"]
    rows = [
        f"| compared with | candidate {metric} | its {metric} | largest allowed | folds | result | how |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for c in verdict["comparisons"]:
        result = "pass" if c["passed"] else "**FAIL**"
        rows.append(
            f"| {c['against']} | {c['candidate']:.4g} | {c['reference']:.4g} | {c['allowed']:.4g} | {c['folds']} "
            f"| {result} | {c['how'].strip('()')} |"
        )
    return rows + [""] + [f"- {note}" for note in verdict["notes"]]


def render_markdown(verdict: GateVerdict, heading_detail: str, unit: str) -> str:
    """The verdict as a table: every comparison, what it compared, and whether it passed."""
    word = "ELIGIBLE for promotion" if verdict.eligible else "REJECTED: not eligible for promotion"
    rows = [
        f"# Quality gate: {word}",
        "",
        heading_detail,
        "",
        f"Candidate v{verdict.candidate_version}: backtest {verdict.metric} {verdict.candidate_value:.4g} "
        f"± {verdict.candidate_spread:.3g} {unit} (mean ± standard deviation over {verdict.folds} folds).",
        "",
        *comparison_table(verdict.to_dict()),
    ]
    return "\n".join(rows).rstrip() + "\n"
