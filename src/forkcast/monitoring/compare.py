"""Champion against challenger (`forkcast compare`): two models on the same inputs, judged on the same rows.

The inputs are either
- a date range of the project's data (`score_on_data`): the prepared rows, with their true values, scored by each
  model's own pipeline (scikit-learn: what the service answers through ONNX is within `train.onnx_tolerance` of it);
- the inference log of a service that ran a challenger in its shadow (`score_on_log`, see serving/shadow.py): the
  answers and the challenger's predictions as logged, with the true values where labels are known (`forkcast replay`
  writes them), else only how far the two agree.

The report gives each model's RMSE, MAE and bias (mean error) overall and per value of each declared seasonal key
(`seasonal_keys` in dataset.yaml: for the bikes, the hour and the kind of day), which wins on `gate.metric` and by how
much, and how sure that is: the difference against the backtest's standard deviation of that metric over its folds
(how much one model's error moves from one fold to the next, in outputs/evaluation/backtest.json), and on a date
range, in how many fold-long blocks the winner won. A difference within one standard deviation is no clear winner.
It writes `outputs/compare/`: report.md, compare.json (every figure) and plot.svg (the metric by segment).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd

from forkcast import atomic, paths
from forkcast.data.declaration import Inputs, figure
from forkcast.serving.build import ModelSource
from forkcast.serving.contract import CHALLENGER_PREDICTION, CHALLENGER_VERSION, CHECK_REQUEST_PREFIXES, PREDICTION
from forkcast.values import plain

COMPARE_DIR = paths.OUTPUTS / "compare"
CHAMPION, CHALLENGER, ACTUAL = "champion", "challenger", "actual"
SIDES = (CHAMPION, CHALLENGER)


class CompareError(Exception):
    """The comparison cannot be made as asked: no rows, a model that cannot score them, a bad labels file."""


class NothingToCompareError(CompareError):
    """The inference log holds no challenger predictions (yet)."""


@dataclass(frozen=True)
class Side:
    """One of the two models, as the report names it."""

    label: str  # `v3 (production)`, `forkcast:v3-… (model version 3)`
    model_version: str
    lineage: dict[str, Any]


@dataclass(frozen=True)
class Scored:
    """The compared rows: `actual` (NaN where unknown), `champion`, `challenger` (NaN where it failed), the seasonal
    keys, and on a date range `timestamp`."""

    frame: pd.DataFrame
    inputs: dict[str, Any]  # where the rows came from, for the report
    warnings: tuple[str, ...] = ()
    blocks_from: dt.date | None = None  # on a date range: the first day of the fold-long blocks


# --- scoring ---------------------------------------------------------------------------------------------------------


def score_on_data(
    rows: pd.DataFrame, sides: tuple[tuple[Side, ModelSource], tuple[Side, ModelSource]], keys: Sequence[str],
    first: dt.date, last: dt.date,
) -> Scored:  # fmt: skip
    """Each model's predictions of `rows` (prepared rows: features, time and target), beside the truth."""
    from forkcast.model.estimator import predict

    target = sides[0][1].inputs.target
    if sides[1][1].inputs.target.name != target.name:
        raise CompareError(f"the two models predict different targets ({target.name}, "
                           f"{sides[1][1].inputs.target.name}): there is nothing to compare")  # fmt: skip
    frame = pd.DataFrame({"timestamp": rows["timestamp"], ACTUAL: rows[target.name].astype("float64")})
    for role, (side, source) in zip(SIDES, sides, strict=True):
        missing = [name for name in source.inputs.names if name not in rows.columns]
        if missing:
            raise CompareError(f"{role} {side.label} takes {', '.join(missing)}, which the prepared data lacks: it "
                               "was trained on another declaration of the data")  # fmt: skip
        frame[role] = predict(source.pipeline, rows, source.inputs.target).to_numpy()
    for key in keys:
        frame[key] = rows[key].to_numpy()
    warnings = tuple(warning for side, _ in sides if (warning := _learned(side, first, last)))
    inputs = {"kind": "data", "from": first.isoformat(), "to": last.isoformat(), "rows": len(frame)}
    return Scored(frame.reset_index(drop=True), inputs, warnings, first)


def _learned(side: Side, first: dt.date, last: dt.date) -> str | None:
    """A warning when the model was fitted on rows of the compared range: its error there is not a forecast's."""
    fitted = side.lineage.get("fitted_on") or {}
    if not fitted.get("start") or not fitted.get("end"):
        return None
    start, end = (dt.datetime.fromisoformat(str(fitted[edge])).date() for edge in ("start", "end"))
    if start > last or end < first:
        return None
    return (f"{side.label} was fitted on {start}..{end}, which overlaps the compared dates: its error on them is "
            "not a forecast's (a refit model has learned every row). Compare on dates after both models' data, or on "
            "logged traffic with labels (`forkcast compare --log`)")  # fmt: skip


def score_on_log(
    sink: str, inputs: Inputs, keys: Sequence[str], labels: pd.DataFrame | None, *,
    since: dt.datetime | None = None, until: dt.datetime | None = None,
) -> tuple[Scored, Side, Side]:  # fmt: skip
    """The logged answers and the challenger's logged predictions (smoke tests and probes left out), with the labels
    where known. When the log holds several champion/challenger pairs, the latest pair is compared."""
    from forkcast.serving import inference_log

    columns = ["timestamp", "request_id", "position", "model_version", CHALLENGER_VERSION, PREDICTION,
               CHALLENGER_PREDICTION, *keys]  # fmt: skip
    try:
        table = inference_log.read(sink, schema=inference_log.log_schema(inputs, shadow=True), since=since,
                                   columns=columns)  # fmt: skip
    except Exception as exc:  # pyarrow's errors for an unreadable or foreign log
        raise CompareError(f"cannot read the inference log at {sink}: {exc}") from exc
    frame = table.to_pandas()
    if until is not None:
        frame = frame[frame["timestamp"] < pd.Timestamp(until)]
    ours = frame["request_id"].astype(str).str.startswith(CHECK_REQUEST_PREFIXES)
    frame = frame[~ours & frame[CHALLENGER_VERSION].notna()]
    if frame.empty:
        raise NothingToCompareError(
            f"no challenger predictions in the inference log at {sink}"
            + (f" since {since:%Y-%m-%d}" if since else "")
            + ": build a bento with one (`forkcast build --challenger VERSION`), deploy it and send it traffic"
        )
    pairs = frame.groupby(["model_version", CHALLENGER_VERSION])["timestamp"].max().sort_values()
    champion_version, challenger_version = (str(value) for value in pairs.index[-1])
    warnings = [
        f"the log also holds v{version} against challenger v{other} (until {latest:%Y-%m-%d %H:%M}): left out; "
        "give --from to compare from a date on"
        for (version, other), latest in pairs.iloc[:-1].items()
    ]
    frame = frame[(frame["model_version"] == champion_version) & (frame[CHALLENGER_VERSION] == challenger_version)]
    if labels is not None:
        frame = frame.merge(labels, on=["request_id", "position"], how="left")
    else:
        frame = frame.assign(**{ACTUAL: np.nan})
    failed = int(frame[CHALLENGER_PREDICTION].isna().sum())
    if failed:
        warnings.append(
            f"{failed:,} of {len(frame):,} logged records have no challenger prediction (it failed or was skipped: "
            "forkcast_shadow_requests_total on the service's /metrics says which): left out"
        )
    scored = pd.DataFrame({
        ACTUAL: frame[ACTUAL].astype("float64").to_numpy(),
        CHAMPION: frame[PREDICTION].astype("float64").to_numpy(),
        CHALLENGER: frame[CHALLENGER_PREDICTION].astype("float64").to_numpy(),
        **{key: frame[key].to_numpy() for key in keys},
    })  # fmt: skip
    source = {
        "kind": "log", "log": sink, "rows": len(scored), "labelled": int(scored[ACTUAL].notna().sum()),
        "since": since.isoformat() if since else None,
        "first": frame["timestamp"].min().isoformat(), "last": frame["timestamp"].max().isoformat(),
    }  # fmt: skip
    sides = Side(f"v{champion_version}", champion_version, {}), Side(f"v{challenger_version}", challenger_version, {})
    return Scored(scored, source, tuple(warnings)), *sides


# --- judging ---------------------------------------------------------------------------------------------------------


def errors(actual: pd.Series, predicted: pd.Series) -> dict[str, float]:
    """RMSE, MAE and bias (mean of predicted minus actual: positive is too high)."""
    error = predicted.to_numpy(dtype=float) - actual.to_numpy(dtype=float)
    return {
        "rmse": round(float(np.sqrt(np.mean(error**2))), 4),
        "mae": round(float(np.mean(np.abs(error))), 4),
        "bias": round(float(np.mean(error)), 4),
    }


def agreement(frame: pd.DataFrame) -> dict[str, float]:
    """How far the challenger's predictions are from the champion's on the same records."""
    difference = frame[CHALLENGER].to_numpy(dtype=float) - frame[CHAMPION].to_numpy(dtype=float)
    return {
        "mean_abs_difference": round(float(np.mean(np.abs(difference))), 4),
        "max_abs_difference": round(float(np.max(np.abs(difference))), 4),
        "mean_difference": round(float(np.mean(difference)), 4),  # the challenger's minus the champion's
    }


def backtest_spread(path: Path, metric: str) -> float | None:
    """The backtest's standard deviation of `metric` over its folds, where the backtest was run."""
    recorded = atomic.read_json_if_exists(path) or {}
    spread = ((recorded.get("model") or {}).get(metric) or {}).get("std")
    return float(spread) if spread else None


def judge(
    overall: dict[str, dict[str, float]], metric: str, spread: float | None, unit: str, *, names: dict[str, str]
) -> dict[str, Any]:
    """Which wins on `metric`, by how much, and whether the difference stands out of the backtest's spread."""
    champion, challenger = overall[CHAMPION][metric], overall[CHALLENGER][metric]
    difference = challenger - champion
    winner = None if difference == 0 else CHALLENGER if difference < 0 else CHAMPION
    relative = abs(difference) / max(champion, challenger) if max(champion, challenger) > 0 else 0.0
    spreads = abs(difference) / spread if spread else None
    clear = winner is not None and spreads is not None and spreads >= 1
    gap = f"{figure(abs(difference))} {unit}"
    if spreads is None:
        statement = (f"{'no' if winner is None else 'the ' + winner} wins by {gap}; no backtest spread to judge it by "
                     f"({paths.BACKTEST_JSON}: run `dvc repro backtest`)")  # fmt: skip
    elif not clear:
        statement = (
            f"the difference ({gap}) is within one backtest standard deviation ({figure(spread or 0)} {unit}, how "
            f"much one model's {metric.upper()} moves between the backtest's folds): not a clear winner"
        )
    else:
        statement = (f"the difference ({gap}) is {spreads:.1f} backtest standard deviations ({figure(spread or 0)} "
                     f"{unit}): {names[str(winner)]} is a clear winner")  # fmt: skip
    return {
        "metric": metric, "winner": winner, "clear": clear, "difference": round(difference, 4),
        "relative": round(relative, 4), "backtest_std": spread,
        "in_backtest_std": round(spreads, 2) if spreads is not None else None, "statement": statement,
    }  # fmt: skip


def blocks(frame: pd.DataFrame, first: dt.date, length: pd.Timedelta, metric: str) -> dict[str, Any]:
    """The metric of each model in each block of `length` from `first` (the backtest's folds are as long)."""
    number = ((frame["timestamp"] - pd.Timestamp(first)) // length).astype(int)
    each: list[dict[str, Any]] = []
    for index, rows in frame.groupby(number):
        start = pd.Timestamp(first) + length * int(index)
        scores = {side: errors(rows[ACTUAL], rows[side])[metric] for side in SIDES}
        each.append({"from": start.date().isoformat(), "rows": len(rows), **scores})
    won = [CHALLENGER if block[CHALLENGER] < block[CHAMPION] else CHAMPION if block[CHAMPION] < block[CHALLENGER]
           else None for block in each]  # fmt: skip
    return {"days": length.days, "challenger_won": won.count(CHALLENGER), "champion_won": won.count(CHAMPION),
            "of": len(each), "each": each}  # fmt: skip


def compare(
    scored: Scored, champion: Side, challenger: Side, *, keys: Sequence[str], metric: str, spread: float | None,
    unit: str, block_length: pd.Timedelta | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The report: inputs, agreement, metrics overall and by segment (when labelled), the verdict, the warnings."""
    both = scored.frame.dropna(subset=[CHALLENGER])
    labelled = both.dropna(subset=[ACTUAL])
    names = {CHAMPION: f"the champion {champion.label}", CHALLENGER: f"the challenger {challenger.label}"}
    if both.empty:
        raise NothingToCompareError("the challenger scored none of the records")
    overall = {side: errors(labelled[ACTUAL], labelled[side]) for side in SIDES} if len(labelled) else None
    segments: dict[str, list[dict[str, Any]]] = {}
    for key in keys:
        segments[key] = []
        for value, rows in both.groupby(key, sort=True):
            known = rows.dropna(subset=[ACTUAL])
            segment: dict[str, Any] = {"value": plain(value), "rows": len(rows), "labelled": len(known),
                                       "agreement": agreement(rows)}  # fmt: skip
            if len(known):
                segment |= {side: errors(known[ACTUAL], known[side]) for side in SIDES}
            segments[key].append(segment)
    report: dict[str, Any] = {
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        CHAMPION: asdict(champion), CHALLENGER: asdict(challenger),
        "inputs": scored.inputs, "unit": unit,
        "rows": {"compared": len(both), "labelled": len(labelled), "without_challenger": len(scored.frame) - len(both)},
        "agreement": agreement(both), "overall": overall, "segments": segments,
        "verdict": judge(overall, metric, spread, unit, names=names) if overall else None,
        "blocks": None, "warnings": list(scored.warnings),
    }  # fmt: skip
    if overall and block_length is not None and scored.blocks_from is not None and "timestamp" in labelled:
        report["blocks"] = blocks(labelled, scored.blocks_from, block_length, metric)
    return report


# --- the report ------------------------------------------------------------------------------------------------------


def headline(report: dict[str, Any]) -> str:
    verdict, champion, challenger = report["verdict"], report[CHAMPION]["label"], report[CHALLENGER]["label"]
    unit = report["unit"]
    if verdict is None:
        agree = report["agreement"]
        apart, higher = figure(agree["mean_abs_difference"]), figure(agree["mean_difference"])
        return (
            f"No labels: no winner can be named. The challenger {challenger} predicts {apart} {unit} away from the "
            f"champion {champion} on average ({higher} {unit} higher on the whole)"
        )
    metric = verdict["metric"].upper()
    scores = {side: figure(report["overall"][side][verdict["metric"]]) for side in SIDES}
    if verdict["winner"] is None:
        return f"A tie: {metric} {scores[CHAMPION]} {unit} for both"
    winner = verdict["winner"]
    loser = CHAMPION if winner == CHALLENGER else CHALLENGER
    who = f"The {winner} {report[winner]['label']}"
    better = f"{verdict['relative']:.1%} lower than the {loser}'s"
    outcome = "wins" if verdict["clear"] else "is ahead, but not clearly"
    return f"{who} {outcome}: {metric} {scores[winner]} vs {scores[loser]} {unit} ({better})"


def render_markdown(report: dict[str, Any]) -> str:
    champion, challenger, unit = report[CHAMPION]["label"], report[CHALLENGER]["label"], report["unit"]
    lines = [f"## Champion {champion} against challenger {challenger}", "", f"**{headline(report)}.**", ""]
    verdict, blocked = report["verdict"], report["blocks"]
    if verdict:
        sentence = verdict["statement"][0].upper() + verdict["statement"][1:]
        if blocked:
            sentence += (f". Block by block ({blocked['days']} days each): the challenger had the lower "
                         f"{verdict['metric'].upper()} in {blocked['challenger_won']} of {blocked['of']}, the champion "
                         f"in {blocked['champion_won']}")  # fmt: skip
        lines += [sentence + ".", ""]
    lines += [_inputs_line(report), ""]
    lines += [f"> warning: {text}" for text in report["warnings"]] + ([""] if report["warnings"] else [])
    if report["overall"]:
        lines += [f"| | RMSE ({unit}) | MAE ({unit}) | bias ({unit}) |", "| --- | ---: | ---: | ---: |"]
        for side in SIDES:
            scores = report["overall"][side]
            lines.append(f"| {side} {report[side]['label']} | {figure(scores['rmse'])} | {figure(scores['mae'])} | "
                         f"{figure(scores['bias'])} |")  # fmt: skip
        lines.append("")
    agree = report["agreement"]
    lines += [f"Agreement: the challenger is {figure(agree['mean_abs_difference'])} {unit} from the champion on "
              f"average, {figure(agree['max_abs_difference'])} at most.", ""]  # fmt: skip
    for key, segments in report["segments"].items():
        lines += [f"### By {key}", ""]
        if report["overall"]:
            metric = verdict["metric"] if verdict else "rmse"
            lines += [f"| {key} | rows | champion {metric.upper()} | challenger {metric.upper()} | lower |",
                      "| --- | ---: | ---: | ---: | --- |"]  # fmt: skip
            for segment in segments:
                if CHAMPION not in segment:
                    continue
                pair = segment[CHAMPION][metric], segment[CHALLENGER][metric]
                lower = "challenger" if pair[1] < pair[0] else "champion" if pair[0] < pair[1] else "tie"
                lines.append(f"| {segment['value']} | {segment['labelled']:,} | {figure(pair[0])} | {figure(pair[1])} "
                             f"| {lower} |")  # fmt: skip
        else:
            lines += [f"| {key} | rows | mean difference | mean absolute difference |", "| --- | ---: | ---: | ---: |"]
            for segment in segments:
                agreed = segment["agreement"]
                lines.append(f"| {segment['value']} | {segment['rows']:,} | {figure(agreed['mean_difference'])} | "
                             f"{figure(agreed['mean_abs_difference'])} |")  # fmt: skip
        lines.append("")
    lines.append("Every figure is in `compare.json` beside this file; `plot.svg` draws them by segment.")
    return "\n".join(lines) + "\n"


def _inputs_line(report: dict[str, Any]) -> str:
    source, rows = report["inputs"], report["rows"]
    if source["kind"] == "data":
        return f"Inputs: the project's data from {source['from']} to {source['to']}, {rows['compared']:,} rows."
    return (
        f"Inputs: the inference log {source['log']}, {rows['compared']:,} records logged with both predictions "
        f"({source['first'][:16]} to {source['last'][:16]} UTC), {rows['labelled']:,} of them labelled."
    )


PANEL_WIDTH, PANEL_HEIGHT, MARGIN = 420, 240, 44
COLOURS = {CHAMPION: "#1f77b4", CHALLENGER: "#d62728", "difference": "#555555"}


def render_svg(report: dict[str, Any]) -> str:
    """One panel per seasonal key: each model's metric per value (without labels, their mean absolute difference)."""
    labelled = report["overall"] is not None
    metric = report["verdict"]["metric"] if report["verdict"] else "rmse"
    series = list(SIDES) if labelled else ["difference"]
    panels = list(report["segments"].items())
    width, height = PANEL_WIDTH * max(1, len(panels)), PANEL_HEIGHT + 30
    what = f"{metric.upper()} ({report['unit']})" if labelled else f"mean absolute difference ({report['unit']})"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="11"><rect width="100%" height="100%" fill="white"/>']  # fmt: skip
    for index, (key, segments) in enumerate(panels):
        rows = [s for s in segments if not labelled or CHAMPION in s]
        values = {name: [s[name][metric] if labelled else s["agreement"]["mean_abs_difference"] for s in rows]
                  for name in series}  # fmt: skip
        top = max((max(v) for v in values.values() if v), default=1.0) * 1.1 or 1.0
        x0, plot_w, plot_h = index * PANEL_WIDTH + MARGIN, PANEL_WIDTH - MARGIN - 12, PANEL_HEIGHT - 2 * MARGIN

        def x(position: int, count: int = len(rows), x0: int = x0, plot_w: int = plot_w) -> float:
            return x0 + (plot_w * (position + 0.5) / count if count else 0)

        def y(value: float, top: float = top, plot_h: int = plot_h) -> float:
            return MARGIN + plot_h * (1 - value / top)

        parts.append(f'<text x="{x0}" y="{MARGIN - 14}" font-size="13">{escape(what)} by {escape(key)}</text>')
        axis = MARGIN + plot_h
        parts.append(f'<line x1="{x0}" y1="{axis}" x2="{x0 + plot_w}" y2="{axis}" stroke="#999"/>')
        parts.append(f'<line x1="{x0}" y1="{MARGIN}" x2="{x0}" y2="{MARGIN + plot_h}" stroke="#999"/>')
        for tick in (0.0, top / 2, top):
            parts.append(f'<text x="{x0 - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{figure(tick)}</text>')
        step = max(1, len(rows) // 12)
        for position, segment in enumerate(rows):
            if position % step == 0:
                parts.append(f'<text x="{x(position):.1f}" y="{MARGIN + plot_h + 14}" text-anchor="middle">'
                             f'{escape(str(segment["value"]))}</text>')  # fmt: skip
        for name in series:
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values[name]))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{COLOURS[name]}" stroke-width="2"/>')
            parts += [f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{COLOURS[name]}"/>'
                      for i, v in enumerate(values[name])]  # fmt: skip
    for number, name in enumerate(series):
        label = f"{name} {report[name]['label']}" if name in SIDES else "challenger minus champion, in absolute value"
        left = MARGIN + number * 260
        parts.append(f'<rect x="{left}" y="{height - 20}" width="12" height="4" fill="{COLOURS[name]}"/>')
        parts.append(f'<text x="{left + 16}" y="{height - 14}">{escape(label)}</text>')
    return "\n".join([*parts, "</svg>"]) + "\n"


def write(report: dict[str, Any], directory: Path = COMPARE_DIR) -> Path:
    """report.md, compare.json and plot.svg in `directory` (each written whole); the Markdown's path."""
    atomic.write_json(directory / "compare.json", report)
    atomic.write_text(directory / "plot.svg", render_svg(report))
    atomic.write_text(directory / "report.md", render_markdown(report))
    return directory / "report.md"
