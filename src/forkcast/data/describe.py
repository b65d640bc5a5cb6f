"""`forkcast dataset`: the declaration in words, with everything derived from it, for whoever edits dataset.yaml."""

from __future__ import annotations

from forkcast.data.declaration import CALENDAR, Dataset


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def describe(dataset: Dataset) -> str:
    time, frequency = dataset.time, dataset.time.frequency
    target = dataset.columns[dataset.target]
    kinds = dataset.drift_kinds()
    features = [["feature", "type", "values", "drift", "from"]]
    for feature in dataset.features:
        column = dataset.columns.get(feature.name)
        source = f"calendar: {CALENDAR[dataset.calendar[feature.name]].meaning}" if column is None else column.source
        values = column.rule() if column else f"{feature.min:g} to {feature.max:g}"
        values += f", in steps of {feature.step}" if feature.step else ""
        features.append([feature.name, feature.type, values, kinds[feature.name], source])
    request_rules = dataset.request_rules()
    lines = [
        f"{dataset.name}: {dataset.description}".rstrip(": "),
        "",
        f"data      {dataset.file}: one row per {_row_of(dataset)} (key: {', '.join(dataset.unique_key)})",
        f"time      {time.describe()}",
        f"target    {dataset.target} ({target.type}, {target.rule()}, in {dataset.unit})",
        f"feed      {dataset.feed or 'none (forkcast new-data needs one)'}",
        "",
        "The model's inputs, in model order (also the fields of a request to /predict):",
        *_table(features),
        "",
        f"leaking   {', '.join(dataset.columns_with('leaking')) or 'none'}  (they give the target away: never inputs)",
        f"ignored   {', '.join(dataset.columns_with('ignored')) or 'none'}",
        f"baseline  the mean {dataset.target} of the same {', '.join(dataset.seasonal_keys)} in training",
        f"cycle     a {frequency.cycle} of {frequency.rows_per_cycle} {frequency.periods}: replay batches, "
        f"error by {frequency.cycle_position.replace('_', ' ')}",
    ]
    restated = {name: column.calendar for name, column in dataset.columns.items() if column.calendar}
    if restated:
        lines.append(
            "restated  " + ", ".join(f"{name} agrees with the time's {what}" for name, what in restated.items())
        )
    if dataset.rules:
        lines += ["", "Rules (a row must meet each; `*` also every request):"]
        width = max(len(name) for name in dataset.rules)
        for name, rule in dataset.rules.items():
            lines.append(f"  {'*' if name in request_rules else ' '} {name:<{width}}  {rule}")
    if dataset.hook:
        lines += [
            "",
            f"hook      {dataset.hook} adds {', '.join(n for n, c in dataset.columns.items() if c.source == 'hook')}",
        ]
    return "\n".join(lines)


def _row_of(dataset: Dataset) -> str:
    """What one row covers: a period, or a period of one series when a key tells series apart."""
    series = [name for name in dataset.unique_key if name not in dataset.time.columns]
    period = dataset.time.frequency.period
    return f"{period} and {', '.join(series)}" if series else period
