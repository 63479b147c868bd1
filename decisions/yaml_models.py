"""Policy files as typed models: YAML text validated by a pydantic model, every error naming the
file, the line and the field (`deployments/slos.yaml line 12, slos[0].objective: Input should be
less than 1`). Shared by the SLA definitions (`slo_definitions.py`) and the fleet (`fleet.py`).

Pure: parses text it is given; the callers' `load_*` functions read the file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from perfops.errors import ConfigurationError

M = TypeVar("M", bound=BaseModel)
ERRORS_SHOWN = 5


Unions = Mapping[str, Collection[str]]
"""A discriminated union's field name -> its tags, which pydantic puts in an error's path right
after the field (`slos[0].sli.ratio.good`) but which are not in the file."""
NO_UNIONS: Unions = MappingProxyType({})


def node_at(
    root: yaml.Node | None, loc: tuple[Any, ...], unions: Unions = NO_UNIONS
) -> yaml.Node | None:
    """The deepest YAML node on the pydantic error path `loc`."""
    tags = {tag for field_tags in unions.values() for tag in field_tags}
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                None,
            )
            if nxt is None:
                if part in tags:
                    continue
                return node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return node
            node = node.value[part]
        else:
            return node
    return node


def field_path(loc: tuple[Any, ...], unions: Unions = NO_UNIONS) -> str:
    """A pydantic error path as a reader writes it: `slos[0].objective`."""
    text = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for a mapping's key: the field name says it
            continue
        elif i > 0 and part in unions.get(str(loc[i - 1]), ()):
            continue  # the discriminated union's tag adds nothing for a reader
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def parse_model(
    model: type[M],
    text: str,
    source: str,
    *,
    expected: str,
    unions: Unions = NO_UNIONS,
) -> M:
    """Parse YAML `text` into `model`. A YAML error, a top level that is not a mapping (the
    message says `expected`), or a validation error raise `ConfigurationError` naming `source`,
    the line and the field (the first five problems)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigurationError(f"{source}{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{source}: expected {expected}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:ERRORS_SHOWN]:
            loc = tuple(err["loc"])
            node = node_at(root, loc, unions)
            line = f" line {node.start_mark.line + 1}" if node is not None else ""
            problems.append(f"{source}{line}, {field_path(loc, unions)}: {err['msg']}")
        extra = exc.error_count() - ERRORS_SHOWN
        more = f" (and {extra} more)" if extra > 0 else ""
        raise ConfigurationError("; ".join(problems) + more) from None
