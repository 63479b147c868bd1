"""Time zone names compared as zones: AWS may give a scheduled action's TimeZone back as an alias
of the name perfops wrote, which is the same action (no rewrite, no change reported)."""

from __future__ import annotations

import pytest

from decisions.scaling_policy import Schedule
from decisions.time_zones import UTC_NAMES, same_time_zone, time_zone_problem

UTC_SPELLINGS = [
    "UTC",
    "Etc/UTC",
    "Etc/UCT",
    "UCT",
    "Zulu",
    "Etc/Zulu",
    "Universal",
    "Etc/Universal",
    "GMT",
    "Etc/GMT",
    "GMT0",
    "Etc/GMT+0",
    "Etc/GMT-0",
    "Greenwich",
]


@pytest.mark.parametrize("alias", UTC_SPELLINGS)
def test_every_name_of_utc_is_utc_both_ways(alias: str) -> None:
    assert same_time_zone("UTC", alias) and same_time_zone(alias, "UTC")
    assert same_time_zone("Etc/UTC", alias) and same_time_zone(alias, "Etc/GMT")
    assert time_zone_problem(alias) is None  # each is a zone one may also write


def test_utc_as_a_service_may_spell_it_in_another_case() -> None:
    assert same_time_zone("UTC", "utc") and same_time_zone("etc/utc", "UTC")


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("US/Eastern", "America/New_York"),
        ("Asia/Calcutta", "Asia/Kolkata"),
        ("Europe/Kiev", "Europe/Kyiv"),
        ("GB", "Europe/London"),
    ],
)
def test_a_link_is_the_zone_it_links_to(link: str, target: str) -> None:
    assert same_time_zone(link, target) and same_time_zone(target, link)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("UTC", "Europe/London"),  # offset 0 in winter only
        ("UTC", "Etc/GMT+1"),
        ("Europe/Berlin", "Europe/Paris"),  # the same rules today, another history
        ("America/New_York", "America/Chicago"),
        ("UTC", "Mars/Base"),
    ],
)
def test_other_zones_differ(a: str, b: str) -> None:
    assert not same_time_zone(a, b) and not same_time_zone(b, a)


def test_a_name_that_is_no_zone_equals_only_itself() -> None:
    assert same_time_zone("Mars/Base", "Mars/Base")
    assert not same_time_zone("Mars/Base", "Mars/Colony")


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("", "is empty"),
        (" UTC", "has spaces around it"),
        ("Mars/Base", "unknown time zone 'Mars/Base': give an IANA name"),
        ("utc", "unknown time zone 'utc'"),  # what AWS may return is not what one may write
        ("../../etc/passwd", "unknown time zone"),
        ("localtime", "'localtime' is no IANA time zone name"),
        ("posixrules", "'posixrules' is no IANA time zone name"),
        ("right/UTC", "'right/UTC' is no IANA time zone name"),
    ],
)
def test_a_bad_name_says_why(name: str, says: str) -> None:
    problem = time_zone_problem(name)
    assert problem is not None and says in problem


def test_a_schedule_refuses_a_bad_zone_saying_why() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Berln': give an IANA name"):
        Schedule(timezone="Europe/Berln")
    assert Schedule(timezone="Etc/UTC").timezone == "Etc/UTC"


def test_the_utc_names_are_names_of_the_database() -> None:
    assert all(time_zone_problem(n) is None for n in UTC_SPELLINGS)
    assert {n.lower() for n in UTC_SPELLINGS} <= UTC_NAMES
