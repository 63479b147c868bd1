"""The Prometheus source block."""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prometheus_api_client import PrometheusConnect
from pydantic import Field, SecretStr, model_validator
from urllib3.util.retry import Retry

from blocks.url_credentials import credentials_out_of_url
from perfops.redaction import register_secret

# Prometheus refuses range queries over 11,000 points per series.
MAX_POINTS_PER_QUERY = 11_000
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)


class PrometheusSource(Block):
    """A Prometheus (or Prometheus-compatible) server perfops reads metrics from.

    Requests retry transient failures (connection errors, 429 honouring Retry-After, 5xx) with
    exponential backoff and jitter; a 4xx such as a bad PromQL expression fails at once.

    Example:
        Load a saved source and run an instant query:
        ```python
        from blocks import PrometheusSource

        prom = PrometheusSource.load("BLOCK_NAME")
        print(prom.get_client().custom_query("up"))
        ```
    """

    _block_type_name = "perfops Prometheus Source"
    _block_type_slug = "perfops-prometheus-source"
    _description = "A Prometheus HTTP API perfops queries for load, latency and SLO metrics."

    url: str = Field(
        default=...,
        description="Base URL of the Prometheus HTTP API, e.g. https://prometheus.internal:9090; "
        "a user and password in it move to username and password (a secret).",
    )
    bearer_token: SecretStr | None = Field(
        default=None, description="Optional bearer token sent as `Authorization: Bearer ...`."
    )
    username: str | None = Field(
        default=None, description="User for HTTP basic auth (a Prometheus behind a proxy)."
    )
    password: SecretStr | None = Field(default=None, description="Password for HTTP basic auth.")
    verify_tls: bool = Field(default=True, description="Verify the server's TLS certificate.")
    timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="Seconds to wait for one HTTP request."
    )
    retries: int = Field(
        default=3, ge=0, le=10, description="Retries of a transient failure (5xx, 429, timeout)."
    )
    max_points_per_query: int = Field(
        default=MAX_POINTS_PER_QUERY,
        ge=100,
        le=MAX_POINTS_PER_QUERY,
        description="Longer range queries are split into chunks of at most this many steps.",
    )

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_the_url(cls, data: Any) -> Any:
        """A user and password the URL carries (`https://user:pw@prom:9090`, a Prometheus
        behind basic auth, as PERFOPS_PROMETHEUS_URL or a fleet file may give it) move to
        `username` and the secret `password`: the URL is a plain field, shown in the UI, kept
        in the block document and named in reasons, errors and scaling records. The URL's
        credentials were the ones sent, so they win here too."""
        return credentials_out_of_url(data)

    def auth(self) -> tuple[str, str] | None:
        """The basic-auth pair requests sends, or None without a user and password."""
        if self.username is None and self.password is None:
            return None
        password = self.password.get_secret_value() if self.password else ""
        register_secret(password)
        return (self.username or "", password)

    def get_client(self) -> PrometheusConnect:
        """A `PrometheusConnect` with retries, timeout, TLS setting and auth (bearer header or
        basic)."""
        headers = None
        if self.bearer_token is not None:
            token = self.bearer_token.get_secret_value()
            register_secret(token)
            headers = {"Authorization": f"Bearer {token}"}
        retry = Retry(
            total=self.retries,
            connect=self.retries,
            read=self.retries,
            status=self.retries,
            backoff_factor=0.5,
            backoff_jitter=0.5,
            status_forcelist=TRANSIENT_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        return PrometheusConnect(
            url=self.url.rstrip("/"),
            headers=headers,
            auth=self.auth(),
            disable_ssl=not self.verify_tls,
            retry=retry,
            timeout=self.timeout_s,
        )
