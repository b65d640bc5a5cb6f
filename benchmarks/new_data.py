"""The new-data scenario: the feed arrives month by month, each month through the real pipeline and gate.

In a fresh clone of this repository: `forkcast new-data --through FIRST`, then for each month `dvc add data`,
`dvc repro`, and `forkcast promote` when the gate says eligible (as an approval would), then the next month. For
each month it records the model's and the baseline's backtest RMSE, the gate's verdict, and what the refit
changes: the evaluated model (trained on the training split) and the served one (refit on every row) scored on
the following month, which neither saw.

    python benchmarks/new_data.py --first 2011-04 --last 2011-12

Prints a Markdown table and writes benchmarks/results/new_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "new_data.json"


def sh(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the clone's own local store
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def next_month_rmse(project: Path, month: pd.Period) -> dict[str, float] | None:
    """The evaluated and the served model, and the seasonal baseline of all rows so far, on the month after."""
    from forkcast.config import load_params
    from forkcast.data.prepare import build_features, load_raw
    from forkcast.model.estimator import predict
    from forkcast.model.metrics import seasonal_baseline

    params = load_params(project / "params.yaml")
    dataset = params.dataset
    rows = build_features(load_raw(project / "feed" / dataset.file.name, dataset), dataset)
    stamps = rows["timestamp"].dt.to_period("M")
    seen, following = rows[stamps <= month], rows[stamps == month + 1]
    if following.empty:
        return None
    target = dataset.target
    inputs = dataset.inputs()

    def rmse(predicted: Any) -> float:
        return float(np.sqrt(np.mean((np.asarray(predicted, dtype=float) - following[target].to_numpy()) ** 2)))

    evaluated = joblib.load(project / "outputs/model/model.joblib")
    served = joblib.load(project / "outputs/served/model.joblib")
    return {
        "evaluated": rmse(predict(evaluated, following, inputs.target)),
        "served": rmse(predict(served, following, inputs.target)),
        "baseline": rmse(seasonal_baseline(seen, target, following, dataset.seasonal_keys)),
        "rows": len(following),
    }


def run(first: str, last: str, project: Path) -> list[dict[str, Any]]:
    sh(["git", "clone", "-q", str(ROOT), str(project)], ROOT)
    sh(["dvc", "pull", "-q", "data.dvc", "feed.dvc"], project)
    sh(["forkcast", "new-data", "--through", first], project)
    results = []
    for month in pd.period_range(first, last, freq="M"):
        if str(month) != first:
            sh(["forkcast", "new-data", "--through", str(month)], project)
        sh(["dvc", "add", "-q", "data"], project)
        started = time.perf_counter()
        sh(["dvc", "repro", "-q"], project)
        seconds = time.perf_counter() - started
        backtest = json.loads((project / "outputs/evaluation/backtest.json").read_text())
        gate = json.loads((project / "outputs/registry/gate.json").read_text())
        if gate["eligible"] and not gate["verdict"].get("unchanged"):
            sh(["forkcast", "promote", str(gate["version"])], project)
        row = {
            "month": str(month),
            "repro_seconds": round(seconds, 1),
            "backtest_model_rmse": backtest["model"]["rmse"],
            "backtest_baseline_rmse": backtest["baseline"]["rmse"],
            "version": gate["version"],
            "eligible": gate["eligible"],
            "comparisons": [
                {key: c[key] for key in ("against", "candidate", "reference", "allowed", "passed", "how")}
                for c in gate["verdict"]["comparisons"]
            ],
            "next_month": next_month_rmse(project, month),
        }
        results.append(row)
        print(line(row), flush=True)
    return results


def line(row: dict[str, Any]) -> str:
    model, baseline = row["backtest_model_rmse"], row["backtest_baseline_rmse"]
    verdict = (
        "eligible, released"
        if row["eligible"]
        else "REFUSED: "
        + "; ".join(
            f"{c['against']} {c['candidate']:.1f} vs {c['reference']:.1f}"
            for c in row["comparisons"]
            if not c["passed"]
        )
    )
    following = row["next_month"]
    refit = (
        f"{following['evaluated']:.1f} | {following['served']:.1f} | {following['baseline']:.1f}"
        if following
        else "| |"
    )
    return (
        f"| {row['month']} | v{row['version']} | {model['mean']:.1f} ± {model['std']:.1f} "
        f"| {baseline['mean']:.1f} ± {baseline['std']:.1f} | {verdict} | {refit} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--first", default="2011-04", help="the first month the data holds (YYYY-MM)")
    parser.add_argument("--last", default="2011-12", help="the last month to arrive (YYYY-MM)")
    args = parser.parse_args()
    print(
        "| data through | version | backtest RMSE (mean ± std) | baseline | gate | next month: evaluated model "
        "| served (refit) | baseline |\n| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as scratch:
        results = run(args.first, args.last, Path(scratch) / "project")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"results: {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
