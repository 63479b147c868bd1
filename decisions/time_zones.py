"""IANA time zone names as a schedule and AWS use them: which names are one zone, and which name
is no zone at all.

AWS may give a scheduled action's `TimeZone` back under another name than the one written (a
canonical name for a link, `Etc/UTC` for `UTC`, or the other way round): compared as strings,
every apply would rewrite the actions and report changes forever. `same_time_zone` compares the
zones instead: the UTC names (UTC, Etc/UTC, Etc/UCT, Zulu, Universal, GMT, Etc/GMT, ...) are one
zone, and any other two names are one zone when the time zone database holds the same data for
both (a link and its target: US/Eastern and America/New_York).

Pure apart from reading the time zone database, as `zoneinfo` does (cached per name).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from zoneinfo import TZPATH, ZoneInfo, ZoneInfoNotFoundError, available_timezones

# Names of UTC (links to Etc/UTC) and of GMT (links to Etc/GMT): always offset 0, no daylight
# saving; their data differ only in the abbreviation (UTC, GMT), so they are listed, not read.
UTC_NAMES = frozenset(
    name.lower()
    for name in (
        "UTC",
        "UCT",
        "Zulu",
        "Universal",
        "Etc/UTC",
        "Etc/UCT",
        "Etc/Zulu",
        "Etc/Universal",
        "GMT",
        "GMT0",
        "GMT+0",
        "GMT-0",
        "Greenwich",
        "Etc/GMT",
        "Etc/GMT0",
        "Etc/GMT+0",
        "Etc/GMT-0",
        "Etc/Greenwich",
    )
)
# Names zoneinfo loads that are no IANA zone a service knows: this machine's own zone.
NOT_ZONES = frozenset({"localtime"})


def time_zone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone name (None: it is one), before anything is written
    with it: empty, unknown to the time zone database, or a file of it that is no zone."""
    if not name or name != name.strip():
        return f"time zone {name!r} is empty or has spaces around it: give an IANA name"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return (
            f"unknown time zone {name!r}: give an IANA name such as UTC, Europe/Berlin or "
            "America/New_York"
        )
    if name in NOT_ZONES or name not in _known():
        return (
            f"{name!r} is no IANA time zone name (a file of the time zone database, not a "
            "zone): give one such as UTC, Europe/Berlin or America/New_York"
        )
    return None


def same_time_zone(a: str, b: str) -> bool:
    """Whether the names `a` and `b` are one time zone: equal names, two names of UTC, or two
    names whose time zone data are the same (a link and its target). A name that is no zone
    equals only itself."""
    if a == b:
        return True
    return (zone_identity(a) or a) == (zone_identity(b) or b)


@lru_cache(maxsize=256)
def zone_identity(name: str) -> str | None:
    """What `name` stands for: `UTC` for a name of UTC, else a digest of its time zone data
    (shared by a link and its target); None when it is no time zone."""
    if name.lower() in UTC_NAMES:
        return "UTC"
    if time_zone_problem(name) is not None:
        return None
    data = _zone_data(name)
    return None if data is None else "tzif:" + hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    return frozenset(available_timezones())


def _zone_data(name: str) -> bytes | None:
    """The bytes `ZoneInfo(name)` reads: the first file of the system's time zone paths, else
    the `tzdata` package's (a name checked by `time_zone_problem`: no path escapes)."""
    for root in TZPATH:
        path = Path(root, name)
        if path.is_file():
            return path.read_bytes()
    try:
        return resources.files("tzdata").joinpath("zoneinfo", *name.split("/")).read_bytes()
    except (ModuleNotFoundError, OSError):
        return None
