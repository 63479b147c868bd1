"""`perfops cache ...`: invalidation (flow invalidate_cache), warm-up (warm_cache) and
statistics (collect_cache_stats) of the platform's caches; docs/caches.md."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.commands.fleet import FleetFileOption, FleetOption, run_fleet
from cli.support import (
    JsonFlag,
    VerboseFlag,
    env_option,
    fail,
    print_json,
    print_wrapped,
    run_flow,
    set_env,
)
from perfops.redaction import redact

app = typer.Typer(no_args_is_help=True)

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "deployments" / "caches.yaml"
PolicyOption = Annotated[
    Path,
    env_option(
        "PERFOPS_CACHE_POLICY", "Cache policy YAML (caches, events, tags).", "--policy",
        show_default=True,
    ),
]  # fmt: skip
RedisUrlOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_REDIS_URL",
        "Redis (or one node of a Redis Cluster) holding the caches.",
        "--redis-url",
    ),
]
RedisBlockOption = Annotated[
    str | None,
    env_option(
        "PERFOPS_REDIS_BLOCK", "Name of a saved perfops-redis-target block.", "--redis-block"
    ),
]
_COLOURS = {
    "dropped": "green",
    "purged": "green",
    "notified": "green",
    "warmed": "green",
    "would drop": "cyan",
    "would purge": "cyan",
    "refused": "red",
    "failed": "red",
    "skipped": "yellow",
}


@app.callback()
def cache() -> None:
    """Caches: invalidate (event, pattern, tag, versions), warm up, statistics."""


def _print(text: str, *, indent: int = 2, style: str | None = None) -> None:
    print_wrapped(redact(text), indent=indent, style=style)


def _warm_url(policy: Path, cache_name: str) -> str | None:
    """The cache's warm_url in the policy (None when it has none); a bad policy or an unknown
    cache is refused as bad usage."""
    from decisions.cache_policy import load_policy
    from perfops.errors import PerfopsError

    try:
        return load_policy(policy).cache(cache_name).warm_url
    except PerfopsError as exc:
        raise typer.BadParameter(str(exc)) from None


def _check_keys(policy: Path, cache_name: str, keys: list[str]) -> None:
    """Keys that are not the cache's own are bad usage, refused before Prefect starts (the flow
    refuses them again before anything is fetched or written)."""
    from decisions.cache_policy import load_policy
    from decisions.cache_warmup import not_of_cache

    loaded = load_policy(policy)
    why = not_of_cache(loaded, loaded.cache(cache_name), keys)
    if why:
        raise typer.BadParameter(why, param_hint="--key/--keys-file")


def _check_request(
    policy: Path,
    event: str | None,
    payload: str | None,
    pattern: str | None,
    tag: str | None,
    versions: str | None,
) -> None:
    """Refuse as bad usage, before Prefect starts, a request the policy cannot resolve: an
    event it does not define, a payload without a field the event's caches need, an undeclared
    tag, an unversioned cache (the flow checks the same again)."""
    from decisions.cache_policy import load_policy, parse_payload, resolve_request
    from perfops.errors import PerfopsError

    try:
        resolve_request(load_policy(policy), event, parse_payload(payload), pattern, tag, versions)
    except PerfopsError as exc:
        raise typer.BadParameter(str(exc)) from None


def _run(
    load: Callable[[], Any],
    asked: dict[str, Any],
    *,
    label: str,
    fleet_label: str,
    fleet_artifact_key: str,
    redis_url: str | None,
    redis_block: str | None,
    fleet: str | None,
    fleet_file: Path | None,
    as_json: bool,
    verbose: bool,
) -> Any | None:
    """The flow's report of one run on one Redis (--redis-block, else --redis-url, else
    PERFOPS_REDIS_URL); or, with --fleet, None once run_fleet has run it over every cache of the
    fleet (one child run each, `fleet_label`, summary artifact `fleet_artifact_key`) and printed
    the outcome; --redis-url and --redis-block are refused with --fleet."""
    if fleet:
        run_fleet(
            load, asked, fleet=fleet, fleet_file=fleet_file,
            single={"--redis-url": redis_url, "--redis-block": redis_block},
            label=fleet_label, artifact_key=fleet_artifact_key, as_json=as_json, verbose=verbose,
            system="redis",
        )  # fmt: skip
        return None
    set_env("PERFOPS_REDIS_URL", redis_url)
    return run_flow(
        load,
        {**asked, "redis_block": redis_block},
        verbose=verbose,
        label=label,
        show_progress=not as_json,
    )


@app.command()
def invalidate(
    event: Annotated[
        str | None,
        typer.Option(help="Application event (user_updated) or Prefect event name."),
    ] = None,
    payload: Annotated[
        str | None, typer.Option(help='The event\'s payload as JSON, e.g. \'{"user_id": "42"}\'.')
    ] = None,
    pattern: Annotated[str | None, typer.Option(help="A Redis glob, e.g. 'user:42:*'.")] = None,
    tag: Annotated[
        str | None, typer.Option(help="NAME=VALUE: the keys in the tag index set tag:NAME:VALUE.")
    ] = None,
    versions: Annotated[
        str | None, typer.Option(help="A versioned cache: drop versions older than it keeps.")
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Drop. Without it: count and sample only.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="With --apply: drop even past --max-keys or a bare '*'."),
    ] = False,
    max_keys: Annotated[
        int | None,
        typer.Option(min=1, help="Refuse past this many keys (default: the policy's, 100,000)."),
    ] = None,
    cdn_block: Annotated[
        str | None,
        env_option(
            "PERFOPS_CDN_BLOCK", "A saved perfops-cdn-target block to purge.", "--cdn-block"
        ),
    ] = None,
    policy: PolicyOption = DEFAULT_POLICY,
    redis_url: RedisUrlOption = None,
    redis_block: RedisBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Drop the cache keys an event, a pattern, a tag or a version bump makes stale (flow
    invalidate_cache). Dry run unless --apply. Exit 1 when a step was refused or failed. With
    --fleet, on every cache of the fleet (its targets with a redis block), one child run each."""
    given = [n for n, v in (("--event", event), ("--pattern", pattern), ("--tag", tag),
                            ("--versions", versions)) if v]  # fmt: skip
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --event, --pattern, --tag, --versions")
    if payload is not None:
        if not event:
            raise typer.BadParameter("--payload goes with --event")
        try:
            parsed = json.loads(payload)
        except ValueError as exc:
            raise typer.BadParameter(f"--payload is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise typer.BadParameter("--payload must be a JSON object")
    if force and not apply:
        raise typer.BadParameter("--force goes with --apply")
    if not policy.is_file():
        raise typer.BadParameter(f"--policy {policy}: no such file")
    _check_request(policy, event, payload, pattern, tag, versions)

    def load() -> Any:
        from flows.invalidate_cache import invalidate_cache

        return invalidate_cache

    asked = {"event": event, "payload": payload, "pattern": pattern, "tag": tag,
             "versions": versions, "apply": apply, "force": force, "max_keys": max_keys,
             "policy_path": str(policy), "cdn_block": cdn_block}  # fmt: skip
    report = _run(
        load, asked, redis_url=redis_url, redis_block=redis_block, fleet=fleet,
        fleet_file=fleet_file, as_json=as_json, verbose=verbose,
        label="invalidating" if apply else "counting what an invalidation would drop",
        fleet_label="cache invalidation" + ("" if apply else " (dry run)"),
        fleet_artifact_key="perfops-cache-invalidation-fleet",
    )  # fmt: skip
    if report is None:  # --fleet: done
        return
    if as_json:
        print_json(report)
    else:
        _print(f"cache invalidation on {report.redis}", indent=0, style="bold")
        _print(f"{report.summary} in {report.seconds:.1f} s")
        for o in report.outcomes:
            _print(f"{o.result}: {o.target}", style=_COLOURS.get(o.result))
            _print(o.reason, indent=4, style="dim")
            if o.samples and o.result in ("would drop", "refused"):
                _print("e.g. " + ", ".join(o.samples[:5]), indent=4, style="dim")
        if report.dry_run and report.matched:
            _print("dry run: nothing was dropped; rerun with --apply to drop these")
    if report.failure:
        fail(f"{report.failure} (artifact perfops-cache-invalidation)")


@app.command()
def stats(
    sample: Annotated[
        int | None,
        typer.Option(min=100, max=1_000_000, help="Keys sampled for per-prefix figures."),
    ] = None,
    policy: PolicyOption = DEFAULT_POLICY,
    redis_url: RedisUrlOption = None,
    redis_block: RedisBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Hit ratio since the last run, evictions, memory, fragmentation, per-prefix keys and
    memory, keys without TTL, big keys (flow collect_cache_stats). Read-only. With --fleet,
    every cache of the fleet (its targets with a redis block), one child run each."""
    if not policy.is_file():
        raise typer.BadParameter(f"--policy {policy}: no such file")

    def load() -> Any:
        from flows.collect_cache_stats import collect_cache_stats

        return collect_cache_stats

    report = _run(
        load, {"policy_path": str(policy), "sample": sample}, redis_url=redis_url,
        redis_block=redis_block, fleet=fleet, fleet_file=fleet_file, as_json=as_json,
        verbose=verbose, label="measuring the cache", fleet_label="cache statistics",
        fleet_artifact_key="perfops-cache-stats-fleet",
    )  # fmt: skip
    if report is None:  # --fleet: done
        return
    if as_json:
        print_json(report)
        return
    _print(f"cache statistics of {report.redis}", indent=0, style="bold")
    _print(report.summary)
    for event, reason in report.alerts:
        _print(f"{event}: {reason}", style="red")
    for p in report.prefixes[:10]:
        no_ttl = f", {p.no_ttl} of {p.sampled} sampled without TTL" if p.no_ttl else ""
        _print(
            f"{p.prefix}: ~{p.estimated_keys:,} keys, ~{p.estimated_bytes / 1e6:,.1f} MB{no_ttl}"
        )
    for b in report.big_keys:
        _print(f"big key {b.key}: {b.bytes / 1e6:,.1f} MB", style="yellow")


@app.command()
def warm(
    cache_name: Annotated[str, typer.Option("--cache", help="A cache of the policy.")],
    key: Annotated[
        list[str] | None, typer.Option("--key", help="A key to warm (repeatable).")
    ] = None,
    keys_file: Annotated[
        Path | None, typer.Option(help="A file of keys, one a line.", exists=True, dir_okay=False)
    ] = None,
    url_template: Annotated[
        str | None,
        typer.Option(help="Where a key's value is fetched: https://app/api/{key} (key quoted)."),
    ] = None,
    keys_sql: Annotated[
        str | None,
        typer.Option(help="Read-only SQL returning (key, value), or (key) with --url-template."),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Requests in flight.")] = 8,
    ttl_s: Annotated[
        int | None, typer.Option(min=1, help="TTL instead of the cache's (jitter still applies).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List only; write nothing.")] = False,
    dsn: Annotated[
        str | None, env_option("PERFOPS_DSN", "PostgreSQL DSN for --keys-sql.", "--dsn")
    ] = None,
    policy: PolicyOption = DEFAULT_POLICY,
    redis_url: RedisUrlOption = None,
    redis_block: RedisBlockOption = None,
    fleet: FleetOption = None,
    fleet_file: FleetFileOption = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Warm a cache from keys (--key, --keys-file) fetched through --url-template (default: the
    cache's warm_url in the policy), or from --keys-sql (flow warm_cache). Exit 1 when a key
    failed to warm. With --fleet, on every cache of the fleet, one child run each."""
    keys = list(key or [])
    if keys_file is not None:
        keys += [line.strip() for line in keys_file.read_text().splitlines() if line.strip()]
    if keys and keys_sql:
        raise typer.BadParameter("give keys (--key/--keys-file) or --keys-sql, not both")
    if not keys and not keys_sql:
        raise typer.BadParameter(
            "nothing to warm: give keys (--key/--keys-file, fetched through --url-template or "
            "the cache's warm_url) or --keys-sql"
        )
    if not policy.is_file():
        raise typer.BadParameter(f"--policy {policy}: no such file")
    if keys and not url_template and not _warm_url(policy, cache_name):
        raise typer.BadParameter(
            f"--key/--keys-file need --url-template ({cache_name} has no warm_url in {policy})"
        )
    if keys:
        _check_keys(policy, cache_name, keys)
    set_env("PERFOPS_DSN", dsn)

    def load() -> Any:
        from flows.warm_cache import warm_cache

        return warm_cache

    asked = {"cache": cache_name, "keys": keys or None, "url_template": url_template,
             "keys_sql": keys_sql, "concurrency": concurrency, "ttl_s": ttl_s,
             "dry_run": dry_run, "policy_path": str(policy)}  # fmt: skip
    report = _run(
        load, asked, redis_url=redis_url, redis_block=redis_block, fleet=fleet,
        fleet_file=fleet_file, as_json=as_json, verbose=verbose, label="warming the cache",
        fleet_label="cache warm-up" + (" (dry run)" if dry_run else ""),
        fleet_artifact_key="perfops-cache-warmup-fleet",
    )  # fmt: skip
    if report is None:  # --fleet: done
        return
    if as_json:
        print_json(report)
    else:
        _print(f"cache warm-up on {report.redis}", indent=0, style="bold")
        _print(f"{report.summary} in {report.seconds:.1f} s")
        for f in report.failures[:10]:
            _print(f"failed: {f.key}: {f.reason}", style="red")
    if report.failure:
        fail(f"{report.failure} (artifact perfops-cache-warmup)")
