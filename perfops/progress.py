"""Progress of a long flow, for whoever runs it in this process (the CLI's bar or step lines).

Flows call `report(label, done, total)` as they go; without a listener (a deployment run) it does
nothing. The listener is a context variable, so it reaches the flow's own threads when they run in
a copied context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str, int, int], None]

_listener: ContextVar[Listener | None] = ContextVar("perfops_progress", default=None)


def report(label: str, done: int, total: int) -> None:
    """`label` with `done` of `total` steps finished."""
    listener = _listener.get()
    if listener is not None:
        listener(label, done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Send the progress of flows run inside this block to `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
