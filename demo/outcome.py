"""What each step of the demo reports: its progress callback and the outcome of one flow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[str, int, int], None]


@dataclass
class FlowOutcome:
    flow: str
    state: str
    found: str
    artifact: str
    files: list[str] = field(default_factory=list)
