"""Load tests as typed models read from `deployments/load_tests.yaml`: what to send (weighted
scenarios of steps with think time and assertions), how hard (a pattern of requests per second,
the open model, or of virtual users, the closed model), for how long, and what counts as a pass
(success criteria per endpoint). A malformed file fails naming the file, the line and the field
(`deployments/load_tests.yaml line 14, tests[0].pattern.rps: Input should be greater than 0`).

Pure: the only I/O is `load_tests`, which reads one file. The arrival schedule these models
describe is `decisions.load_schedule`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from decisions.slo_definitions import parse_duration
from decisions.yaml_models import parse_model
from perfops.errors import ConfigurationError
from perfops.wording import counted

TEST_NAME = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
_FIELD_PATH = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
# A header name is an RFC 9110 token; a value and a URL hold no control character (a CR or LF
# would end the header and start another: header injection)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VALUE_BAD = re.compile(r"[^\t\x20-\x7e\x80-\xff]")  # controls (CR, LF, ...), past Latin-1
_URL_BAD = re.compile(r"[^\x21-\x7e]")  # anything but printable ASCII: spaces, controls
# Headers a step may not set: perfops writes them itself. Host comes from the target's URL (the
# allow-list checks that host: a Host header would send the load elsewhere); the framing and
# hop-by-hop ones say how the request and the connection end; x-perfops-request numbers it.
REFUSED_HEADERS = {
    "host": "perfops sets Host from the target's URL, the host the allow-list checked",
    "content-length": "perfops frames the request itself",
    "transfer-encoding": "perfops frames the request itself",
    "connection": "perfops keeps its connections alive itself",
    "keep-alive": "perfops keeps its connections alive itself",
    "proxy-connection": "perfops keeps its connections alive itself",
    "upgrade": "perfops speaks HTTP/1.1 only",
    "te": "perfops frames the request itself",
    "trailer": "perfops frames the request itself",
    "expect": "perfops sends the body at once",
    "x-perfops-request": "perfops numbers every request itself",
}
# Hard limits of the file itself; the target block's caps (blocks.load_target) apply on top.
MAX_DURATION = timedelta(hours=1)
MAX_RPS = 20_000.0
MAX_VUS = 2_000


_TIMEDELTA = TypeAdapter(timedelta)


def _duration(value: Any) -> timedelta:
    """'500ms', '30s', '5m' or seconds (the file), or ISO 8601 'PT30S' (the model's JSON)."""
    try:
        return parse_duration(value)
    except ValueError:
        if isinstance(value, str) and value.startswith(("P", "-P")):
            return _TIMEDELTA.validate_python(value)
        raise


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Assertions(_Model):
    """What a response must satisfy; a failed assertion counts as an error of its step."""

    status: list[int] = Field(
        default_factory=list,
        description="Accepted status codes; empty = any 2xx or 3xx.",
    )
    json_fields: dict[str, Any] = Field(
        default_factory=dict,
        alias="json",
        description="Dotted field path -> expected value in the JSON body, e.g. status: ok.",
    )
    max_latency_ms: float | None = Field(
        default=None, gt=0, description="A response slower than this fails the assertion."
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("status")
    @classmethod
    def _codes(cls, value: list[int]) -> list[int]:
        bad = [c for c in value if not 100 <= c <= 599]
        if bad:
            raise ValueError(f"not HTTP status codes: {bad}")
        return value

    @field_validator("json_fields")
    @classmethod
    def _paths(cls, value: dict[str, Any]) -> dict[str, Any]:
        bad = [k for k in value if not _FIELD_PATH.match(k)]
        if bad:
            raise ValueError(f"field paths are dotted names like data.status: {bad}")
        return value


class Step(_Model):
    """One request of a scenario."""

    name: str = Field(default="", max_length=80, description="Default: METHOD path.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"] = "GET"
    url: str = Field(
        min_length=1,
        description="A path under the target's base URL (/api/v1/agents), or an absolute URL "
        "whose host the target block allows.",
    )
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = Field(default=None, description="A string is sent as is; anything else as JSON.")
    think_time: Duration = Field(
        default=timedelta(0), description="Pause after this step before the scenario's next."
    )
    timeout: Duration = Field(default=timedelta(seconds=10), description="Per request.")
    assertions: Assertions = Field(default_factory=Assertions, alias="assert")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("/"):
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not a path (/...) or an http(s) URL: {value!r}")
        return value

    @field_validator("headers")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        if any(k.lower() in ("authorization", "cookie", "proxy-authorization") for k in value):
            raise ValueError(
                "credentials do not belong in the file: put the auth header in the "
                "perfops-load-target block (auth_header)"
            )
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(0) < value <= timedelta(minutes=5):
            raise ValueError(f"timeout must be above 0 and at most 5m, got {value}")
        return value

    @property
    def path(self) -> str:
        """The path without the query: what the endpoint is called."""
        return urlsplit(self.url).path or "/"

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def label(self) -> str:
        return self.name or self.endpoint


def request_problems(step: Step) -> list[str]:
    """Why a step's request line or headers are unsafe to send (empty: they are safe): a header
    perfops writes itself (REFUSED_HEADERS), a header name that is not a token, a control
    character (CR, LF, ...) in a header value, or a space, control or non-ASCII character in
    the URL."""
    problems = []
    bad = _URL_BAD.search(step.url)
    if bad:
        problems.append(
            f"url {step.url!r} holds {bad.group()!r} at {bad.start()}: a URL is sent as is, so "
            "no spaces, control characters (CR, LF) or non-ASCII (percent-encode them)"
        )
    for name, value in step.headers.items():
        why = REFUSED_HEADERS.get(name.lower())
        if why is not None:
            problems.append(f"headers may not set {name} ({why})")
        elif not _HEADER_NAME.match(name):
            problems.append(f"header name {name!r} is not a token (letters, digits, -, ...)")
        if _VALUE_BAD.search(value):
            problems.append(
                f"header {name}'s value {value!r} holds a character a header cannot carry (CR, "
                "LF or another control character, or one past Latin-1)"
            )
    return problems


class Scenario(_Model):
    """Steps run in order; scenarios are chosen by weight (each arrival starts one)."""

    name: str = Field(min_length=1, max_length=80)
    weight: float = Field(default=1.0, gt=0)
    steps: list[Step] = Field(min_length=1)


PatternKind = Literal["constant", "ramp", "step", "spike"]


class Pattern(_Model):
    """How hard, over the hold part of the test (between ramp-up and ramp-down).

    `rps` drives an open model (arrivals on a schedule, whether or not earlier requests have
    answered); `vus` a closed model (each virtual user waits for its answer before its next
    request, which hides a stalled server: prefer `rps`). The level is the peak:
    - constant: the level throughout;
    - ramp: from `start_fraction` of the level up to the level;
    - step: `steps` equal steps up to the level;
    - spike: `base_fraction` of the level, the level from `spike_at` for `spike_for`.
    """

    kind: PatternKind = "constant"
    rps: float | None = Field(default=None, gt=0, le=MAX_RPS, description="Peak arrivals/s.")
    vus: int | None = Field(default=None, gt=0, le=MAX_VUS, description="Peak virtual users.")
    start_fraction: float = Field(default=0.1, ge=0, le=1, description="ramp: where it starts.")
    steps: int = Field(default=4, ge=2, le=100, description="step: how many steps.")
    base_fraction: float = Field(default=0.2, ge=0, le=1, description="spike: the base level.")
    spike_at: Duration = Field(default=timedelta(seconds=0), description="spike: from start.")
    spike_for: Duration = Field(default=timedelta(seconds=10), description="spike: how long.")

    @model_validator(mode="after")
    def _one_level(self) -> Pattern:
        if (self.rps is None) == (self.vus is None):
            raise ValueError("give exactly one of rps (open model) or vus (closed model)")
        return self

    @property
    def open_model(self) -> bool:
        return self.rps is not None

    @property
    def level(self) -> float:
        return float(self.rps if self.rps is not None else self.vus or 0)


class Criteria(_Model):
    """Success criteria for one endpoint (`GET /api/v1/agents`) or for `all` requests."""

    endpoint: str = Field(default="all", description="METHOD /path, or all.")
    avg_ms: float | None = Field(default=None, gt=0, description="Mean latency at most.")
    p95_ms: float | None = Field(default=None, gt=0, description="p95 latency at most.")
    p99_ms: float | None = Field(default=None, gt=0, description="p99 latency at most.")
    max_error_rate: float | None = Field(default=None, ge=0, le=1, description="Errors at most.")
    min_rps: float | None = Field(
        default=None, ge=0, description="Achieved throughput (completed requests/s) at least."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if value == "all":
            return value
        method, _, path = value.partition(" ")
        if method.upper() not in METHODS or not path.startswith("/"):
            raise ValueError(f"an endpoint is 'METHOD /path' or all, got {value!r}")
        return f"{method.upper()} {path}"


class Abort(_Model):
    """Stop the test early so it never becomes an outage."""

    max_error_rate: float = Field(
        default=0.5, gt=0, le=1, description="Errors over the last `window` above this: abort."
    )
    window: Duration = Field(default=timedelta(seconds=5))
    min_requests: int = Field(default=50, ge=1, description="Judge a window only past this.")


class LoadTest(_Model):
    """One named load test."""

    name: str = Field(pattern=TEST_NAME, description="lowercase, digits and dashes")
    description: str = ""
    duration: Duration = Field(description="The whole test, ramps included, e.g. 60s.")
    ramp_up: Duration = Field(default=timedelta(0))
    ramp_down: Duration = Field(default=timedelta(0))
    pattern: Pattern
    scenarios: list[Scenario] = Field(min_length=1)
    criteria: list[Criteria] = Field(default_factory=list)
    abort: Abort = Field(default_factory=Abort)
    max_connections: int = Field(
        default=1_000, ge=1, le=MAX_VUS, description="Open connections per share at most."
    )

    @model_validator(mode="after")
    def _times(self) -> LoadTest:
        if not timedelta(0) < self.duration <= MAX_DURATION:
            raise ValueError(f"duration must be above 0 and at most {MAX_DURATION}")
        if self.ramp_up + self.ramp_down >= self.duration:
            raise ValueError(
                f"ramp_up ({self.ramp_up}) + ramp_down ({self.ramp_down}) must be shorter than "
                f"duration ({self.duration})"
            )
        names = [s.name for s in self.scenarios]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scenario names must be unique: {dupes}")
        unsafe = [
            f"test {self.name}, scenario {sc.name}, step {i} ({s.label!r}): " + "; ".join(problems)
            for sc in self.scenarios
            for i, s in enumerate(sc.steps, 1)
            if (problems := request_problems(s))
        ]
        if unsafe:
            raise ValueError(" | ".join(unsafe))
        endpoints = {s.endpoint for sc in self.scenarios for s in sc.steps}
        unknown = [c.endpoint for c in self.criteria if c.endpoint not in endpoints | {"all"}]
        if unknown:
            raise ValueError(
                f"criteria name endpoints no step calls: {unknown} (have {sorted(endpoints)})"
            )
        return self

    @property
    def seconds(self) -> float:
        return self.duration.total_seconds()

    def endpoints(self) -> list[str]:
        seen: dict[str, None] = {}
        for sc in self.scenarios:
            for s in sc.steps:
                seen.setdefault(s.endpoint)
        return list(seen)

    def steps(self) -> list[str]:
        """Every step's key: `scenario/step`."""
        return [f"{sc.name}/{s.label}" for sc in self.scenarios for s in sc.steps]


class LoadTests(_Model):
    tests: list[LoadTest] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> LoadTests:
        names = [t.name for t in self.tests]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"test names must be unique: {dupes}")
        return self

    def get(self, name: str) -> LoadTest:
        for t in self.tests:
            if t.name == name:
                return t
        raise ConfigurationError(
            f"no load test named {name!r}; defined: {', '.join(t.name for t in self.tests)}"
        )


def definition_hash(test: LoadTest) -> str:
    """A short fingerprint of a test's whole definition (what it sends, how hard, for how long):
    two processes that read the same test from their own tests file agree on it only when the
    definitions are the same."""
    canonical = json.dumps(test.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# what a test's figures do not depend on: its words, its pass marks and its abort limits
NOT_THE_LOAD = frozenset({"description", "criteria", "abort"})


def load_fingerprint(test: LoadTest) -> str:
    """A short fingerprint of the load a test sends (its duration, ramps, pattern, scenarios
    and connections; not its description, criteria or abort limits): a run is compared with,
    and a baseline made from, only runs of the same load. Editing what a test sends under the
    same name (another rate, another path) makes its old baseline another test's."""
    kept = test.model_dump(mode="json", by_alias=True, exclude=set(NOT_THE_LOAD))
    canonical = json.dumps(kept, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_tests(text: str, source: str = "<string>") -> LoadTests:
    """Parse and validate YAML text; errors name `source`, the line and the field."""
    return parse_model(LoadTests, text, source, expected="a mapping with tests: [...]")


def load_tests(path: Path | str) -> LoadTests:
    """Read and validate a load tests file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read load tests {path}: {exc.strerror}") from None
    return parse_tests(text, str(path))


def closed_rate_per_user(test: LoadTest) -> tuple[float, Scenario]:
    """The most requests per second one virtual user of the closed model can send, and the
    scenario that sends them: a pass of a scenario sends one request per step and waits at
    least the steps' think times (the answers take time too, so this is an upper bound). A
    scenario without think time is bounded only by how fast the target answers: inf."""
    worst: tuple[float, Scenario] | None = None
    for sc in test.scenarios:
        think = sum(s.think_time.total_seconds() for s in sc.steps)
        rate = len(sc.steps) / think if think > 0 else math.inf
        if worst is None or rate > worst[0]:
            worst = (rate, sc)
    assert worst is not None  # a test has at least one scenario
    return worst


def closed_rate_problem(test: LoadTest, max_rps: float) -> str | None:
    """Why a closed-model (vus) test could send more than `max_rps` (None: it cannot). The
    engine also holds it to the cap at run time; this refuses before any request a test that
    would lean on that limit instead of asking what the target allows."""
    vus = test.pattern.vus
    if vus is None:
        return None
    per_user, sc = closed_rate_per_user(test)
    steps = len(sc.steps)
    need = vus * steps / max_rps  # seconds of think time per pass that keep it under the cap
    if math.isinf(per_user):
        return (
            f"is a closed model of {vus} virtual users whose scenario {sc.name!r} has no think "
            f"time, so its rate is bounded only by how fast the target answers, not by the "
            f"target's cap of {max_rps:,g} rps: give its steps think_time, at least {need:,.3g} s "
            f"per pass ({vus} users x {counted(steps, 'request')} per pass / {max_rps:,g} rps)"
        )
    if vus * per_user > max_rps:
        think = steps / per_user
        per_pass = counted(steps, "request")
        return (
            f"is a closed model of {vus} virtual users that can send up to "
            f"{vus * per_user:,.4g} rps ({vus} users x {per_pass} per {think:,.3g} s of "
            f"think time in scenario {sc.name!r}), over the target's cap of {max_rps:,g} rps: "
            f"fewer users or at least {need:,.3g} s of think time per pass"
        )
    return None


def cap_problems(
    test: LoadTest, *, max_rps: float, max_connections: int, max_duration_s: float
) -> list[str]:
    """Why a test may not run against a target with these caps (empty: it may)."""
    problems = []
    p = test.pattern
    if p.rps is not None and p.rps > max_rps:
        problems.append(f"asks {p.rps:,g} rps, over the target's cap of {max_rps:,g} rps")
    closed = closed_rate_problem(test, max_rps)
    if closed is not None:
        problems.append(closed)
    if p.vus is not None and p.vus > max_connections:
        problems.append(
            f"asks {p.vus} virtual users, over the target's cap of {max_connections} connections"
        )
    if test.seconds > max_duration_s:
        problems.append(f"lasts {test.seconds:g} s, over the target's cap of {max_duration_s:g} s")
    return problems
