"""The load-test target block: where load tests may send traffic, and how much at most."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

from perfops.errors import ConfigurationError
from perfops.redaction import register_secret

# Hard caps no block can raise: a load test must not become an outage.
HARD_MAX_RPS = 20_000.0
HARD_MAX_CONNECTIONS = 2_000
HARD_MAX_DURATION_S = 3_600.0
_PRODUCTION_WORDS = ("prod", "production", "live")


class LoadTarget(Block):
    """A system load tests may target: its base URL, the hosts a test may reach (an
    allow-list: a step's absolute URL must name one of them), the auth header sent with every
    request (a secret: never in logs, parameters or artifacts), and hard caps on the rate, the
    open connections and the duration. A target that is production must say so
    (`production=True`); without it, perfops refuses hosts that look like production.

    Example:
        Load a saved target:
        ```python
        from blocks import LoadTarget

        target = LoadTarget.load("BLOCK_NAME")
        target.check_url("https://staging.example.com/api/v1/agents")
        ```
    """

    _block_type_name = "perfops Load Target"
    _block_type_slug = "perfops-load-target"
    _description = "Where perfops load tests may send traffic: allow-list, auth header, caps."

    base_url: str = Field(description="The target's base URL, e.g. https://staging.example.com.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts a test may reach; empty = only the base URL's host.",
    )
    auth_header_name: str = Field(default="Authorization", description="Header for auth_header.")
    auth_header: SecretStr | None = Field(
        default=None, description="Value sent in auth_header_name with every request (secret)."
    )
    production: bool = Field(
        default=False, description="True only when this target is production and may be tested."
    )
    max_rps: float = Field(default=2_000.0, gt=0, le=HARD_MAX_RPS, description="Cap on rps.")
    max_connections: int = Field(
        default=1_000, ge=1, le=HARD_MAX_CONNECTIONS, description="Cap on open connections."
    )
    max_duration_s: float = Field(
        default=900.0, gt=0, le=HARD_MAX_DURATION_S, description="Cap on a test's duration."
    )

    @field_validator("base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {value!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "base_url must not carry a user or password (it is recorded as the target in "
                "the load history, artifacts and events): give the credentials as auth_header "
                "(a secret), e.g. 'Basic <base64 of user:password>'"
            )
        # one spelling per target: the base URL keys its baselines and history, so
        # https://Staging.example.com:443/ and https://staging.example.com are one target
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"base_url has an invalid port: {value!r} ({exc})") from None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if port is not None and port != {"http": 80, "https": 443}[parts.scheme]:
            host += f":{port}"
        path = parts.path.rstrip("/")
        return urlunsplit((parts.scheme, host, path, parts.query, parts.fragment)).rstrip("/")

    def hosts(self) -> set[str]:
        host = urlsplit(self.base_url).hostname or ""
        return {h.lower() for h in self.allowed_hosts} | {host.lower()}

    def check_url(self, url: str) -> None:
        """Refuse a URL whose host the allow-list does not name, and a production-looking
        host unless `production` is set (ConfigurationError naming the host)."""
        host = (urlsplit(url).hostname or "").lower()
        if host not in self.hosts():
            raise ConfigurationError(
                f"host {host!r} is not in the load target's allow-list "
                f"({', '.join(sorted(self.hosts()))}): add it to allowed_hosts of the "
                "perfops-load-target block"
            )
        labels = host.replace("-", ".").split(".")
        if not self.production and any(w in labels for w in _PRODUCTION_WORDS):
            raise ConfigurationError(
                f"host {host!r} looks like production and the perfops-load-target block does "
                "not say production: true; perfops never load-tests production unless told"
            )

    def auth(self) -> tuple[str, SecretStr] | None:
        """The auth header (name, secret value), registered for redaction."""
        if self.auth_header is None:
            return None
        register_secret(self.auth_header.get_secret_value())
        return self.auth_header_name, self.auth_header
