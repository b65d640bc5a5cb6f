"""Values as JSON writes them: numpy scalars as Python numbers, a missing number as None."""

from __future__ import annotations

import math
from typing import Any


def plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value
