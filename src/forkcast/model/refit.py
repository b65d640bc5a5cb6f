"""The refit stage: the model that is built and served learns every row up to the newest.

The evaluated model never saw the validation and test periods, the newest data; once evaluation and the backtest
have judged the settings, the same settings are fitted on all rows (`train.refit_on_all`, on by default). The
ONNX export is checked again, and the metadata records both models.
"""

from __future__ import annotations

import pandas as pd

from forkcast.config import Params
from forkcast.data.declaration import Inputs
from forkcast.model.backtest import all_rows
from forkcast.model.estimator import fit
from forkcast.model.train import TrainedModel, checked_onnx, model_metadata

EVALUATED_KEYS = ("trained_at", "fitted_on", "metrics", "onnx_max_gap_on_test")


def refit(
    params: Params, splits: dict[str, pd.DataFrame], inputs: Inputs, evaluated: TrainedModel, data_hash: str | None
) -> TrainedModel:
    """The model that is built and served: the same settings fitted on every row up to the newest
    (`train.refit_on_all`), or the evaluated model itself when that is off. Its metadata records both."""
    summary = {key: evaluated.metadata[key] for key in EVALUATED_KEYS}
    if not params.train.refit_on_all:
        return TrainedModel(
            evaluated.pipeline, evaluated.onnx, evaluated.metadata | {"refit_on_all": False, "evaluated_model": summary}
        )
    rows = all_rows(splits)
    pipeline = fit(params.train, rows, inputs)
    onnx_model, gap = checked_onnx(pipeline, splits["test"], params.train.onnx_tolerance)
    metadata = model_metadata(params, pipeline, inputs, splits, data_hash=data_hash, gap=gap, fitted_on=rows)
    return TrainedModel(pipeline, onnx_model, metadata | {"refit_on_all": True, "evaluated_model": summary})
