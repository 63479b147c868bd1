"""Slack message metadata: the shape Slack documents for it, checked by one pure function.

Slack's metadata payload structure (https://api.slack.com/reference/metadata#payload_structure,
as typed by @slack/types `MessageMetadata`): ``{"event_type": str, "event_payload": {...}}``
where each ``event_payload`` value is a string, a number, a boolean, an object whose values are
strings, numbers or booleans, or an array of such objects. Nothing else: no null, no object
inside an object or inside an array's objects, no array of scalars, no NaN or infinity (not
JSON numbers). Slack may refuse anything outside it (``invalid_metadata_format``) or drop it.

`slack_metadata_problems` is what perfops checks before posting (tasks.slack.threads) and what
the Slack stand-in of the tests holds every ``chat.postMessage``/``chat.update`` to.
`drop_nulls` helps build payloads that fit; `alert_metadata` is an alert in that shape (its
labels one JSON string, no nulls) and `alert_from_metadata` reads it back, as well as an alert
of a notice posted before (labels an object, nulls present).
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from decisions.burn_rate import Alert

__all__ = ["alert_from_metadata", "alert_metadata", "drop_nulls", "slack_metadata_problems"]


def _scalar(value: Any) -> bool:
    """A JSON string, finite number or boolean."""
    if isinstance(value, bool | str | int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return f"non-finite number {value!r}"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _object_problems(where: str, obj: Mapping[Any, Any]) -> list[str]:
    """Problems of an object that may hold scalars only."""
    problems = []
    for key, value in obj.items():
        if not isinstance(key, str):
            problems.append(f"{where}: key {key!r} is not a string")
        elif not _scalar(value):
            problems.append(
                f"{where}.{key}: {_kind(value)} (an object may hold strings, numbers, booleans)"
            )
    return problems


def slack_metadata_problems(metadata: Any) -> list[str]:
    """Why `metadata` (``{"event_type": ..., "event_payload": {...}}``) is outside the shape
    Slack documents for message metadata; empty when it fits."""
    if not isinstance(metadata, Mapping):
        return [f"metadata: {_kind(metadata)}, not an object"]
    problems = []
    event_type = metadata.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        problems.append("event_type: missing or not a non-empty string")
    extra = sorted(str(k) for k in metadata if k not in ("event_type", "event_payload"))
    if extra:
        problems.append(f"metadata: unexpected field(s) {', '.join(extra)}")
    payload = metadata.get("event_payload")
    if not isinstance(payload, Mapping):
        return [*problems, f"event_payload: {_kind(payload)}, not an object"]
    for key, value in payload.items():
        where = f"event_payload.{key}"
        if not isinstance(key, str):
            problems.append(f"event_payload: key {key!r} is not a string")
        elif _scalar(value):
            continue
        elif isinstance(value, Mapping):
            problems += _object_problems(where, value)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    problems += _object_problems(f"{where}[{i}]", item)
                else:
                    problems.append(f"{where}[{i}]: {_kind(item)} (an array may hold objects only)")
        else:
            problems.append(f"{where}: {_kind(value)} (not a string, number, boolean, object)")
    return problems


def drop_nulls(values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` without its None (and NaN or infinite) values: an absent key reads as None."""
    return {
        k: v
        for k, v in values.items()
        if v is not None and not (isinstance(v, float) and not math.isfinite(v))
    }


def alert_metadata(alert: Alert) -> dict[str, Any]:
    """`alert` as an object of scalars: its labels one JSON string (sorted keys, so stable),
    its None values left out."""
    fields = alert.model_dump(mode="json")
    fields["labels"] = json.dumps(alert.labels, sort_keys=True, separators=(",", ":"))
    return drop_nulls(fields)


def _nullable(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    return origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def alert_from_metadata(item: Mapping[str, Any]) -> Alert:
    """An alert from its metadata, as `alert_metadata` writes it or as notices posted before it
    carried it (labels an object, None values present): an absent nullable field is None."""
    fields = dict(item)
    for name, info in Alert.model_fields.items():
        if name not in fields and info.is_required() and _nullable(info.annotation):
            fields[name] = None
    labels = fields.get("labels")
    if isinstance(labels, str):
        fields["labels"] = json.loads(labels) if labels else {}
    return Alert.model_validate(fields)
