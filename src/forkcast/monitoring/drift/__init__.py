"""The drift job (`forkcast drift`): is production traffic still like the data the model was trained on?

Reference: the training data of the model in production (`outputs/prepared/train.parquet` by default), with
that model's predictions on it. The model is the one the environment's local deployment serves (its bento's
`model.joblib`), else the pipeline's `outputs/model/model.joblib`.

Current: the environment's inference log over the last `monitor.window_days`, without smoke-test traffic
(request ids starting with `smoke-`) and health probes (`probe-`). Only the needed columns are read.
Above `monitor.max_rows` rows, a seeded uniform sample of that size is compared (the report says so);
missing values, out-of-range values and labels are still counted on every row of the window.

What is compared:
- input drift, per feature (Evidently's DataDriftPreset): a distance, not a p-value (with 100,000 rows every
  p-value is tiny): Jensen-Shannon for the features `dataset.yaml` declares `drift: discrete` (calendar parts,
  categories), Wasserstein in training standard deviations for the `continuous` ones. A feature drifts at
  `monitor.feature_threshold`; the input drifts when at least `monitor.drift_share` of the features do.
- prediction drift: the Wasserstein distance of the logged predictions from the model's predictions on the
  reference, against `monitor.prediction_threshold`.
- data quality: rows, missing values, values outside the training range and categories the model never saw.
- performance, when labels are known: the model's RMSE on the labelled rows against the naive seasonal baseline's
  on the same rows (allowed `monitor.max_error_vs_baseline` worse), and its bias, mean error / mean true value
  (allowed within ±`monitor.max_bias`): a model already bad at its test, or one that misses a level shift, is
  caught either way. Judged once `monitor.min_labelled_cycles` natural cycles (days of sub-daily data) are labelled.

Marginal distributions cannot tell "a slice of what the model saw" from "what it never saw": a window much
narrower than the training period (a week of a nine-month set) differs from it in its seasonal features. The
quality counts (values outside the training range, categories never seen) tell the two apart, and the summary
says which it is. The thresholds and this limit are measured in benchmarks/README.md (Drift).

Labels arrive later than predictions: a Parquet or CSV file with one row per predicted record and the columns
`request_id` (the request's id, as logged), `position` (the record's index in that request, from 0) and
`actual` (the target's true value). Rows without an `actual` are ignored. `forkcast replay` writes this format to
`outputs/labels/<env>.parquet`, which is used when no labels file is given.

Outputs, in `outputs/drift/<env>/`: `report.html` (Evidently's self-contained report), `drift.json` (everything
above, the thresholds used and the reference's identity) and `summary.md` (for a job summary or an issue). They
are written to a temporary directory that then replaces the previous one: a failure leaves the previous report.

Verdict and exit codes: 0 no drift; 1 drift (input drift share at or above the threshold, prediction drift, or
an error worse than allowed); 2 usage or configuration error (no reference: run `dvc repro`); 3 no production
data yet (no log, or no rows in the window once smoke traffic is dropped): then only `drift.json` and
`summary.md` are written, saying so.
"""

from __future__ import annotations

from pathlib import Path

from forkcast import paths

EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_NO_DATA, EXIT_FAILED = 0, 1, 3, 4
NO_DRIFT, DRIFT, NO_DATA = "no drift", "drift", "no production data yet"
DRIFT_DIR = paths.OUTPUTS / "drift"


class DriftError(Exception):
    """A usage or configuration problem: a missing reference or model, a bad labels file, an unreadable log."""


def output_dir(environment: str) -> Path:
    return DRIFT_DIR / environment


def default_labels(environment: str) -> Path | None:
    """`outputs/labels/<env>.parquet` when `forkcast replay` (or you) wrote one."""
    path = paths.LABELS_DIR / f"{environment}.parquet"
    return path if path.exists() else None
