"""The Redis target block."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from blocks.url_credentials import credentials_out_of_url
from perfops.redaction import redact, register_secret


def redis_address(url: str) -> tuple[str, str]:
    """(server, db) of a Redis URL, normalised and without its user or password: one server
    however its URL spells it (`redis://Cache.Internal.:06379/0` and `redis://cache.internal/0`
    are `cache.internal:6379`), a socket by its path (`unix:/run/redis.sock`, db from `?db=`)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        return f"unix:{parts.path}", query.get("db", ["0"])[0] or "0"
    host = (parts.hostname or "localhost").rstrip(".")
    port = parts.port or 6379  # ValueError (`Port out of range`) for a port that is no port
    return f"{host}:{port}", parts.path.strip("/") or query.get("db", ["0"])[0] or "0"


class RedisTarget(Block):
    """A Redis server holding the caches perfops invalidates and warms, and perfops' own state.

    Connection errors and timeouts are retried by redis-py with exponential backoff and jitter;
    command errors (wrong type, no permission) fail at once.

    Example:
        Load a saved target and ping it:
        ```python
        from blocks import RedisTarget

        cache = RedisTarget.load("BLOCK_NAME")
        cache.get_client().ping()
        ```
    """

    _block_type_name = "perfops Redis Target"
    _block_type_slug = "perfops-redis-target"
    _description = "A Redis server: the caches perfops manages and its own locks and state."

    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis:// or rediss:// URL, e.g. rediss://cache:6380/0; a user and password "
        "in it move to username and password (a secret).",
    )
    username: str | None = Field(default=None, description="ACL user name, if any.")
    password: SecretStr | None = Field(default=None, description="Password or ACL secret.")
    key_prefix: str = Field(
        default="perfops:", description="Prefix of the keys perfops writes for its own state."
    )
    socket_timeout_s: float = Field(
        default=5.0, gt=0, le=300, description="Seconds to wait for a reply to one command."
    )
    retries: int = Field(default=3, ge=0, le=10, description="Retries of a connection failure.")

    @property
    def shown_url(self) -> str:
        """The URL as errors and records may show it: a password it carries masked
        (`redis://:***@cache:6379/0`)."""
        return redact(self.url)

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_the_url(cls, data: Any) -> Any:
        """A user and password the URL carries (`redis://:pw@cache/0`, as PERFOPS_REDIS_URL
        often does) move to `username` and the secret `password`: the URL is a plain field,
        shown in the UI, kept in the block document and named in errors. Redis used the URL's
        password over the field's, so it wins here too."""
        return credentials_out_of_url(data, keep_username=True)

    def get_client(self, **kwargs: Any) -> redis.Redis:
        """A `redis.Redis` client (strings decoded) with timeouts and jittered retries."""
        password = self.password.get_secret_value() if self.password else None
        register_secret(password)
        return redis.Redis.from_url(
            self.url,
            username=self.username,
            password=password,
            socket_timeout=self.socket_timeout_s,
            socket_connect_timeout=self.socket_timeout_s,
            retry=Retry(ExponentialWithJitterBackoff(base=0.1, cap=2.0), self.retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            decode_responses=True,
            **kwargs,
        )
