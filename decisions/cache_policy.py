"""The cache policy: the platform's caches, their key patterns, layers, TTLs, tags and versions,
the hierarchy (a group of caches dropped together) and which events drop which caches, read from
a documented YAML file (`deployments/caches.yaml`); and what one invalidation request resolves
to (patterns with the event's values escaped as literal glob text, a tag index set, old
versions), with the safety rules a run applies before it drops anything.

A malformed file fails naming the file, the line and the field (`deployments/caches.yaml line 30,
caches[2].keep_versions: ...`). Pure: the only I/O is `load_policy`, which reads one file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from decisions.slo_definitions import Duration
from decisions.yaml_models import parse_model
from perfops.errors import ConfigurationError

DEFAULT_MAX_KEYS = 100_000
DEFAULT_L1_CHANNEL = "perfops:cache:invalidate"
DEFAULT_TAG_PREFIX = "tag:"
DEFAULT_VERSIONS_PREFIX = "cache:versions:"
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_GLOB_SPECIAL = "*?[]\\"
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=80)]
Layer = Literal["l1", "l2", "l3"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------------- glob text


def escape_glob(value: str) -> str:
    """`value` as literal Redis glob text: `*`, `?`, `[`, `]` and `\\` each behind a backslash,
    so `user:{user_id}:*` filled with `*` matches the keys of the user called `*` only."""
    return "".join("\\" + c if c in _GLOB_SPECIAL else c for c in value)


def placeholders(template: str) -> list[str]:
    """The `{field}` names of a key template, in order."""
    return _PLACEHOLDER.findall(template)


def fill(template: str, values: Mapping[str, str], *, escape: bool = True) -> str:
    """The template with each `{field}` replaced by its value (escaped as literal glob text)."""
    return _PLACEHOLDER.sub(
        lambda m: escape_glob(values[m.group(1)]) if escape else values[m.group(1)], template
    )


def glob_regex(pattern: str) -> str:
    """A Redis glob (`*`, `?`, `[a-z]`, `[^x]`, `\\x`) as an anchored Python regex, for L1
    holders that drop matching keys (`re.fullmatch(regex, key)`)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                inner = "".join(ch if ch == "-" else re.escape(ch) for ch in body.replace("\\", ""))
                out.append(f"[{'^' if negate else ''}{inner}]")
                i = end + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def literal_prefix(pattern: str) -> str:
    """The literal text before a glob's first wildcard (`user:42:` for `user:42:*`)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if c in "*?[":
            break
        out.append(c)
        i += 1
    return "".join(out)


def is_bare(pattern: str) -> bool:
    """A pattern with no literal prefix (`*`, `?*`, `*:profile:*`): it spans every cache."""
    return literal_prefix(pattern) == "" and pattern != ""


def is_literal(pattern: str) -> bool:
    """A pattern with no wildcard at all: it names one key."""
    return literal_prefix(pattern) == pattern.replace("\\", "") and not any(
        c in pattern for c in "*?["
    )


# -------------------------------------------------------------------------------- the file


class CacheSettings(_Model):
    """Limits and names every cache flow shares."""

    max_keys: int = Field(
        default=DEFAULT_MAX_KEYS,
        ge=1,
        description="An invalidation that would drop more keys than this needs --force.",
    )
    scan_count: int = Field(
        default=1000, ge=10, le=100_000, description="SCAN COUNT: buckets visited per call."
    )
    batch_size: int = Field(
        default=1000, ge=1, le=10_000, description="Keys per pipelined UNLINK batch."
    )
    l1_channel: str = Field(
        default=DEFAULT_L1_CHANNEL, min_length=1, description="Pub/sub channel for L1 holders."
    )
    tag_prefix: str = Field(
        default=DEFAULT_TAG_PREFIX, description="Tag index sets are `<prefix><tag>:<value>`."
    )
    versions_prefix: str = Field(
        default=DEFAULT_VERSIONS_PREFIX,
        description="A versioned cache's versions: sorted set `<prefix><cache>`.",
    )
    hit_ratio_target: float = Field(default=0.8, ge=0, le=1)
    evictions_alert: int = Field(
        default=1000, ge=0, description="Evictions between two stats samples that raise an event."
    )
    big_key_bytes: int = Field(default=1_048_576, ge=1)
    stats_sample_keys: int = Field(default=10_000, ge=100, le=1_000_000)
    ttl_jitter: float = Field(
        default=0.1, ge=0, le=0.5, description="Warm-up TTLs vary by up to this fraction."
    )
    warm_max_keys: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Dropped keys an invalidation hands to the warm-up of a cache with "
        "warm_after_invalidation (in its perfops.cache.invalidated event); the rest refill lazily.",
    )


class CdnPurge(_Model):
    """What to purge at the CDN when the cache is invalidated: templates over the same fields
    as the key (values URL-quoted)."""

    urls: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    prefixes: list[str] = Field(default_factory=list)

    def templates(self) -> list[str]:
        return self.urls + self.tags + self.prefixes


class Cache(_Model):
    """One cache: its keys, where it lives, how long, and how it is invalidated."""

    name: Name
    description: str = ""
    key: str = Field(min_length=1, description="Key glob with {field} placeholders.")
    layers: list[Layer] = Field(default_factory=lambda: list[Layer](["l2"]), min_length=1)
    ttl: Duration
    invalidation: Literal["event", "manual", "ttl", "version"] = "event"
    refresh: Literal["lazy", "proactive"] = "lazy"
    tags: list[Name] = Field(default_factory=list)
    keep_versions: int | None = Field(default=None, ge=1, le=100)
    cdn: CdnPurge | None = None
    warm_url: str | None = Field(
        default=None,
        description="Where warm_cache fetches a key's value: a URL with {key} (URL-quoted).",
    )
    warm_after_invalidation: bool = Field(
        default=False,
        description="Re-warm the keys an invalidation dropped (the warm_cache deployment's "
        "trigger on perfops.cache.invalidated); needs refresh: proactive and warm_url.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Cache:
        if is_bare(self.key):
            raise ValueError(f"key {self.key!r} must start with a literal prefix like `user:`")
        fields = set(placeholders(self.key))
        if self.invalidation == "version":
            if self.keep_versions is None:
                raise ValueError("a version-invalidated cache needs keep_versions")
            if "version" not in fields:
                raise ValueError(f"key {self.key!r} of a versioned cache needs {{version}}")
        elif self.keep_versions is not None:
            raise ValueError("keep_versions applies to invalidation: version only")
        if self.cdn is not None:
            if "l3" not in self.layers:
                raise ValueError("cdn purge is set but l3 is not among the layers")
            extra = {p for t in self.cdn.templates() for p in placeholders(t)} - fields
            if extra:
                raise ValueError(f"cdn templates use {sorted(extra)}, not in key {self.key!r}")
        if self.warm_url is not None and "{key}" not in self.warm_url:
            raise ValueError(f"warm_url {self.warm_url!r} needs {{key}} where the key goes")
        if self.warm_after_invalidation:
            if self.refresh != "proactive":
                raise ValueError(
                    "warm_after_invalidation needs refresh: proactive (a lazily refreshed cache "
                    "refills on its next miss, never by a warm-up)"
                )
            if self.invalidation == "version":
                raise ValueError(
                    "warm_after_invalidation: a versioned cache's old versions stay gone"
                )
            if self.warm_url is None:
                raise ValueError("warm_after_invalidation needs warm_url (where values come from)")
        return self

    @property
    def fields(self) -> list[str]:
        return placeholders(self.key)

    @property
    def any_key(self) -> str:
        """Every key of the cache (each {field} a `*`)."""
        return _PLACEHOLDER.sub("*", self.key)


class EventRule(_Model):
    """An application event and the caches (or groups) it invalidates."""

    name: Name
    prefect_events: list[str] = Field(
        default_factory=list, description="Prefect event names that mean this event."
    )
    invalidate: list[Name] = Field(min_length=1)


class CachePolicy(_Model):
    """`deployments/caches.yaml`."""

    settings: CacheSettings = CacheSettings()
    caches: list[Cache] = Field(min_length=1)
    groups: dict[Name, list[Name]] = Field(
        default_factory=dict, description="Hierarchy: a name that invalidates these caches."
    )
    events: list[EventRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> CachePolicy:
        names = [c.name for c in self.caches]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cache names must be unique: {', '.join(dupes)}")
        known = set(names)
        for group, members in self.groups.items():
            if group in known:
                raise ValueError(f"group {group!r} has the name of a cache")
            missing = [m for m in members if m not in known]
            if missing:
                raise ValueError(f"group {group!r} names unknown caches: {', '.join(missing)}")
        targets = known | set(self.groups)
        for rule in self.events:
            missing = [t for t in rule.invalidate if t not in targets]
            if missing:
                raise ValueError(
                    f"event {rule.name!r} invalidates unknown caches or groups: "
                    f"{', '.join(missing)} (known: {', '.join(sorted(targets))})"
                )
        events = [e.name for e in self.events]
        if len(set(events)) != len(events):
            raise ValueError("event names must be unique")
        for rule in self.events:  # one warm-up run per invalidation event: one cache to warm
            warmed = [c.name for c in self.expand(rule.invalidate) if c.warm_after_invalidation]
            if len(warmed) > 1:
                raise ValueError(
                    f"event {rule.name!r} drops {len(warmed)} caches with "
                    f"warm_after_invalidation ({', '.join(warmed)}): at most one per event"
                )
        return self

    def cache(self, name: str) -> Cache:
        for c in self.caches:
            if c.name == name:
                return c
        raise ConfigurationError(
            f"no cache {name!r} in the policy (caches: {', '.join(c.name for c in self.caches)})"
        )

    def expand(self, names: list[str]) -> list[Cache]:
        """Caches and groups -> the caches, each once, in order."""
        out: list[str] = []
        for n in names:
            for member in self.groups.get(n, [n]):
                if member not in out:
                    out.append(member)
        return [self.cache(n) for n in out]

    def event(self, name: str) -> EventRule:
        for rule in self.events:
            if name == rule.name or name in rule.prefect_events:
                return rule
        known = [e.name for e in self.events] + [p for e in self.events for p in e.prefect_events]
        raise ConfigurationError(
            f"no event {name!r} in the cache policy (known: {', '.join(known) or 'none'})"
        )

    def tag_names(self) -> set[str]:
        return {t for c in self.caches for t in c.tags}

    def cache_of_key(self, key: str) -> str | None:
        """The cache whose key pattern matches `key`, if any."""
        for c in self.caches:
            if re.fullmatch(glob_regex(c.any_key), key):
                return c.name
        return None


def parse_policy(text: str, source: str = "deployments/caches.yaml") -> CachePolicy:
    return parse_model(CachePolicy, text, source, expected="a mapping with `caches:`")


def load_policy(path: Path | str) -> CachePolicy:
    """Read and validate a cache policy file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read cache policy {path}: {exc.strerror}") from None
    return parse_policy(text, str(path))


# -------------------------------------------------------------------- what a request drops


class Target(_Model):
    """One thing an invalidation drops: the keys of a pattern, the members of a tag index set,
    or the versions of a cache beyond the newest `keep`."""

    kind: Literal["pattern", "tag", "versions"]
    cache: str | None  # the policy's cache, when known
    pattern: str = ""  # pattern: the glob; versions: the key template with {version}
    tag_key: str = ""  # tag: the index set
    versions_key: str = ""  # versions: the sorted set of versions
    keep: int = 0
    layers: list[Layer] = Field(default_factory=lambda: list[Layer](["l2"]))
    cdn_urls: list[str] = Field(default_factory=list)
    cdn_tags: list[str] = Field(default_factory=list)
    cdn_prefixes: list[str] = Field(default_factory=list)

    @property
    def label(self) -> str:
        what = {"pattern": self.pattern, "tag": self.tag_key, "versions": self.versions_key}
        return f"{self.cache or 'pattern'}: {what[self.kind]}"

    @property
    def regex(self) -> str:
        return glob_regex(self.pattern)


def _scalar(event: str, cache: str, field: str, payload: Mapping[str, Any]) -> str:
    if field not in payload:
        raise ConfigurationError(
            f"event {event}: cache {cache} needs {field!r} in the payload (got: "
            f"{', '.join(sorted(payload)) or 'nothing'})"
        )
    value = payload[field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigurationError(
            f"event {event}: payload {field!r} must be a string or an integer, got {value!r}"
        )
    text = str(value)
    if not text:
        raise ConfigurationError(f"event {event}: payload {field!r} is empty")
    return text


def _cdn(cache: Cache, values: Mapping[str, str]) -> dict[str, list[str]]:
    if cache.cdn is None:
        return {}
    quoted = {k: quote(v, safe="") for k, v in values.items()}
    return {
        "cdn_urls": [fill(t, quoted, escape=False) for t in cache.cdn.urls],
        "cdn_tags": [fill(t, quoted, escape=False) for t in cache.cdn.tags],
        "cdn_prefixes": [fill(t, quoted, escape=False) for t in cache.cdn.prefixes],
    }


def cdn_items(cache: Cache, values: Mapping[str, str]) -> dict[str, list[str]]:
    """The CDN purge items of `cache` for these field values (e.g. one old version)."""
    return _cdn(cache, values)


def versions_target(policy: CachePolicy, cache: Cache) -> Target:
    return Target(
        kind="versions",
        cache=cache.name,
        pattern=cache.key,
        versions_key=f"{policy.settings.versions_prefix}{cache.name}",
        keep=cache.keep_versions or 1,
        layers=cache.layers,
    )


def targets_for_event(policy: CachePolicy, event: str, payload: Mapping[str, Any]) -> list[Target]:
    """What `event` with `payload` drops: per cache (groups expanded), its key pattern with the
    payload's values escaped as literal glob text; a versioned cache drops its old versions."""
    rule = policy.event(event)
    out: list[Target] = []
    for cache in policy.expand(rule.invalidate):
        if cache.invalidation == "version":
            out.append(versions_target(policy, cache))
            continue
        values = {f: _scalar(rule.name, cache.name, f, payload) for f in cache.fields}
        out.append(
            Target(
                kind="pattern",
                cache=cache.name,
                pattern=fill(cache.key, values),
                layers=cache.layers,
                **_cdn(cache, values),
            )
        )
    return out


def target_for_pattern(policy: CachePolicy, pattern: str) -> Target:
    if not pattern:
        raise ConfigurationError("the pattern is empty")
    cache = policy.cache_of_key(literal_prefix(pattern)) if not is_bare(pattern) else None
    if cache is None:
        prefix = literal_prefix(pattern)
        cache = next(
            (c.name for c in policy.caches if prefix and c.any_key.startswith(prefix)), None
        )
    return Target(kind="pattern", cache=cache, pattern=pattern)


def target_for_tag(policy: CachePolicy, tag: str) -> Target:
    """`user_id=42` -> the tag index set `tag:user_id:42` (the tag must be declared)."""
    name, sep, value = tag.partition("=")
    if not sep or not name or not value:
        raise ConfigurationError(f"a tag is NAME=VALUE, like user_id=42: got {tag!r}")
    declared = policy.tag_names()
    if name not in declared:
        raise ConfigurationError(
            f"tag {name!r} is not declared by any cache (declared: "
            f"{', '.join(sorted(declared)) or 'none'})"
        )
    caches = [c for c in policy.caches if name in c.tags]
    return Target(
        kind="tag",
        cache=caches[0].name if len(caches) == 1 else None,
        tag_key=f"{policy.settings.tag_prefix}{name}:{value}",
        layers=sorted({layer for c in caches for layer in c.layers}),
    )


def versions_to_drop(versions: list[tuple[str, float]], keep: int) -> list[str]:
    """Versions (name, deploy time) beyond the newest `keep`, oldest first."""
    newest_first = sorted(versions, key=lambda v: (v[1], v[0]), reverse=True)
    return [v for v, _ in reversed(newest_first[keep:])]


def refusal(
    label: str, pattern: str | None, matched: int | None, max_keys: int, force: bool
) -> str | None:
    """Why an applied invalidation must not go ahead without `force`, or None: a pattern with
    no literal prefix, or more matching keys than `max_keys` (a count stops once past it)."""
    if force:
        return None
    if pattern is not None and is_bare(pattern):
        return (
            f"pattern {pattern!r} has no literal prefix and spans every cache: "
            "pass --apply --force (force=True) to drop it"
        )
    if matched is not None and matched > max_keys:
        return (
            f"{label} matches more than max_keys {max_keys:,} keys (counted {matched:,} before "
            "stopping): pass --force (force=True) or raise --max-keys"
        )
    return None


def parse_payload(payload: dict[str, Any] | str | None) -> dict[str, Any]:
    """An event payload given as an object or as JSON text."""
    if payload is None or payload == "":
        return {}
    if isinstance(payload, dict):
        return payload
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise ConfigurationError(f"payload is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"payload must be a JSON object, got {payload!r}")
    return value


def resolve_request(
    policy: CachePolicy,
    event: str | None,
    payload: dict[str, Any],
    pattern: str | None,
    tag: str | None,
    versions: str | None,
) -> tuple[str, list[Target]]:
    """What one request drops: exactly one of an event (with its payload), a pattern, a tag or
    a versioned cache; returns its description and its targets."""
    given = [
        n
        for n, v in (("event", event), ("pattern", pattern), ("tag", tag), ("versions", versions))
        if v
    ]
    if len(given) != 1:
        raise ConfigurationError(
            "give exactly one of event (with payload), pattern, tag or versions; got "
            + (", ".join(given) or "none")
        )
    if event:
        return f"event {event} {json.dumps(payload, sort_keys=True)}", targets_for_event(
            policy, event, payload
        )
    if pattern:
        return f"pattern {pattern}", [target_for_pattern(policy, pattern)]
    if tag:
        return f"tag {tag}", [target_for_tag(policy, tag)]
    cache = policy.cache(str(versions))
    if cache.invalidation != "version":
        raise ConfigurationError(f"cache {cache.name} is not versioned (invalidation: version)")
    return f"old versions of {cache.name}", [versions_target(policy, cache)]
