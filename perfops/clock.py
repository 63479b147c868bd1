"""Moments as perfops reads them."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(moment: datetime) -> datetime:
    """`moment`, read as UTC when it carries no time zone (a time typed in the UI or sent
    through the API without an offset); one that has a zone is returned as it is."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
