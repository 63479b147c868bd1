"""Cache statistics: the hit ratio between two samples (deltas of `keyspace_hits` and
`keyspace_misses`), evictions and expirations, memory against `maxmemory`, fragmentation, and per
key prefix the estimated key count and memory, keys without a TTL and big keys, from a sample of
keys; which of it deserves an event; the run's report. Pure: `flows/collect_cache_stats.py`
reads Redis (`tasks/cache_stats.py`) and hands the numbers here.
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import BaseModel, Field

from decisions.cache_policy import CachePolicy, CacheSettings
from perfops.wording import counted

EVENT_COLLECTED = "perfops.cache.stats_collected"
EVENT_HIT_RATIO_LOW = "perfops.cache.hit_ratio_low"
EVENT_EVICTIONS = "perfops.cache.evictions_climbing"
LISTED_PREFIXES = 20
LISTED_BIG_KEYS = 10


class NodeSample(BaseModel):
    """One master's counters at one moment (INFO stats, memory, keyspace)."""

    node: str
    at: float  # unix seconds
    keyspace_hits: int
    keyspace_misses: int
    evicted_keys: int
    expired_keys: int
    used_memory: int
    maxmemory: int
    fragmentation: float
    key_count: int
    uptime_s: int = 0
    run_id: str = ""  # the Redis process (INFO server): a new one after every restart


class NodeStats(BaseModel):
    """One master between the previous sample and this one."""

    node: str
    seconds: float | None  # since the previous sample; None: first sample or a restart
    hits: int | None
    misses: int | None
    hit_ratio: float | None
    evicted: int | None
    expired: int | None
    used_memory: int
    maxmemory: int
    memory_share: float | None  # used / max (None: no maxmemory)
    fragmentation: float
    key_count: int
    note: str = ""


def between(previous: NodeSample | None, current: NodeSample) -> NodeStats:
    """Deltas since `previous`; none after a restart (another run_id, counters went down or
    uptime reset: a restart long enough ago has new counters and uptime past the old ones)."""
    share = current.used_memory / current.maxmemory if current.maxmemory else None
    base = {
        "node": current.node,
        "used_memory": current.used_memory,
        "maxmemory": current.maxmemory,
        "memory_share": share,
        "fragmentation": current.fragmentation,
        "key_count": current.key_count,
    }
    if previous is None:
        return NodeStats(
            **base,
            seconds=None,
            hits=None,
            misses=None,
            hit_ratio=None,
            evicted=None,
            expired=None,
            note="first sample: ratio from the next run",
        )
    counters = ("keyspace_hits", "keyspace_misses", "evicted_keys", "expired_keys")
    restarted = bool(previous.run_id and current.run_id and previous.run_id != current.run_id)
    if (
        restarted
        or current.uptime_s < previous.uptime_s
        or any(getattr(current, c) < getattr(previous, c) for c in counters)
    ):
        return NodeStats(
            **base,
            seconds=None,
            hits=None,
            misses=None,
            hit_ratio=None,
            evicted=None,
            expired=None,
            note="restarted or reset since the last sample",
        )
    hits = current.keyspace_hits - previous.keyspace_hits
    misses = current.keyspace_misses - previous.keyspace_misses
    return NodeStats(
        **base,
        seconds=round(current.at - previous.at, 1),
        hits=hits,
        misses=misses,
        hit_ratio=hits / (hits + misses) if hits + misses else None,
        evicted=current.evicted_keys - previous.evicted_keys,
        expired=current.expired_keys - previous.expired_keys,
        note="" if hits + misses else "no reads since the last sample",
    )


class KeySample(BaseModel):
    key: str
    bytes: int
    ttl_s: int  # -1: no TTL


class PrefixStats(BaseModel):
    prefix: str  # the policy's cache name, else the key's first segment + ':'
    sampled: int
    estimated_keys: int
    estimated_bytes: int
    no_ttl: int  # sampled keys without a TTL
    avg_bytes: int


def prefix_of(key: str, policy: CachePolicy | None) -> str:
    if policy is not None:
        cache = policy.cache_of_key(key)
        if cache:
            return cache
    head, sep, _ = key.partition(":")
    return head + sep if sep else "(no prefix)"


def by_prefix(
    samples: list[KeySample], total_keys: int, policy: CachePolicy | None
) -> list[PrefixStats]:
    """Per prefix, scaled from the sample to `total_keys`; biggest memory first."""
    if not samples:
        return []
    scale = total_keys / len(samples)
    groups: dict[str, list[KeySample]] = defaultdict(list)
    for s in samples:
        groups[prefix_of(s.key, policy)].append(s)
    out = [
        PrefixStats(
            prefix=prefix,
            sampled=len(group),
            estimated_keys=round(len(group) * scale),
            estimated_bytes=round(sum(s.bytes for s in group) * scale),
            no_ttl=sum(s.ttl_s == -1 for s in group),
            avg_bytes=round(sum(s.bytes for s in group) / len(group)),
        )
        for prefix, group in groups.items()
    ]
    return sorted(out, key=lambda p: (-p.estimated_bytes, p.prefix))


class StatsReport(BaseModel):
    """What a stats run measured and what it raised."""

    redis: str
    cluster: bool
    nodes: list[NodeStats]
    hit_ratio: float | None
    hits: int | None
    misses: int | None
    evicted: int | None
    expired: int | None
    used_memory: int
    maxmemory: int
    fragmentation: float
    key_count: int
    sampled: int
    prefixes: list[PrefixStats]
    big_keys: list[KeySample]
    alerts: list[tuple[str, str]] = Field(default_factory=list)  # (event, reason)
    failed: str | None = None

    @property
    def summary(self) -> str:
        mem = _mb(self.used_memory) + (f" of {_mb(self.maxmemory)}" if self.maxmemory else "")
        rest = f"{self.key_count:,} keys, {mem} used, fragmentation {self.fragmentation:.2f}"
        if self.evicted is None:  # no deltas on a node: say why (first sample, a restart)
            why = "; ".join(dict.fromkeys(n.note for n in self.nodes if n.evicted is None))
            return f"no hit ratio or evictions yet ({why}), {rest}"
        ratio = f"{self.hit_ratio:.1%}" if self.hit_ratio is not None else "unknown (no reads)"
        return f"hit ratio {ratio}, {counted(self.evicted, 'eviction')}, {rest}"


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:,.1f} MB"


def _sum(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def report(
    redis: str,
    cluster: bool,
    nodes: list[NodeStats],
    samples: list[KeySample],
    policy: CachePolicy | None,
    settings: CacheSettings,
) -> StatsReport:
    hits, misses = _sum([n.hits for n in nodes]), _sum([n.misses for n in nodes])
    keys = sum(n.key_count for n in nodes)
    reads = (hits or 0) + (misses or 0)
    out = StatsReport(
        redis=redis,
        cluster=cluster,
        nodes=nodes,
        hit_ratio=(hits or 0) / reads
        if hits is not None and misses is not None and reads
        else None,
        hits=hits,
        misses=misses,
        evicted=_sum([n.evicted for n in nodes]),
        expired=_sum([n.expired for n in nodes]),
        used_memory=sum(n.used_memory for n in nodes),
        maxmemory=sum(n.maxmemory for n in nodes),
        fragmentation=max((n.fragmentation for n in nodes), default=0.0),
        key_count=keys,
        sampled=len(samples),
        prefixes=by_prefix(samples, keys, policy)[:LISTED_PREFIXES],
        big_keys=sorted(
            (s for s in samples if s.bytes >= settings.big_key_bytes), key=lambda s: -s.bytes
        )[:LISTED_BIG_KEYS],
    )
    out.alerts = alerts(out, settings)
    return out


def alerts(stats: StatsReport, settings: CacheSettings) -> list[tuple[str, str]]:
    """The events this run raises besides `stats_collected`, each with its reason."""
    found: list[tuple[str, str]] = []
    if stats.hit_ratio is not None and stats.hit_ratio < settings.hit_ratio_target:
        found.append(
            (
                EVENT_HIT_RATIO_LOW,
                f"hit ratio {stats.hit_ratio:.1%} since the last sample is under the target "
                f"{settings.hit_ratio_target:.0%} ({stats.hits:,} hits, {stats.misses:,} misses)",
            )
        )
    if stats.evicted is not None and stats.evicted > settings.evictions_alert:
        found.append(
            (
                EVENT_EVICTIONS,
                f"{stats.evicted:,} keys evicted since the last sample (alert above "
                f"{settings.evictions_alert:,}): memory is full; raise maxmemory or cut TTLs",
            )
        )
    return found


def artifact_rows(stats: StatsReport) -> list[dict[str, object]]:
    """Nodes, then prefixes, then big keys: each row leads with what it is about."""
    rows: list[dict[str, object]] = []
    alerting = {e for e, _ in stats.alerts}
    for n in stats.nodes:
        ratio = f"{n.hit_ratio:.1%}" if n.hit_ratio is not None else ""
        low = n.hit_ratio is not None and EVENT_HIT_RATIO_LOW in alerting
        rows.append(
            {
                "what": f"node {n.node}",
                "result": "hit ratio low" if low else "ok",
                "reason": n.note or f"{n.hits:,} hits, {n.misses:,} misses in {n.seconds} s",
                "hit_ratio": ratio,
                "evicted": n.evicted if n.evicted is not None else "",
                "expired": n.expired if n.expired is not None else "",
                "keys": n.key_count,
                "memory": _mb(n.used_memory)
                + (f" of {_mb(n.maxmemory)}" if n.maxmemory else " (no maxmemory)"),
                "fragmentation": round(n.fragmentation, 2),
            }
        )
    for p in stats.prefixes:
        rows.append(
            {
                "what": f"prefix {p.prefix}",
                "result": "no ttl" if p.no_ttl else "ok",
                "reason": f"{p.no_ttl} of {p.sampled} sampled keys have no TTL"
                if p.no_ttl
                else f"{p.sampled} sampled keys",
                "keys": p.estimated_keys,
                "memory": _mb(p.estimated_bytes),
            }
        )
    for b in stats.big_keys:
        rows.append(
            {
                "what": f"key {b.key}",
                "result": "big key",
                "reason": f"{_mb(b.bytes)} (MEMORY USAGE)",
                "memory": _mb(b.bytes),
            }
        )
    return rows
