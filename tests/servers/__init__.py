"""Real local stand-in servers (127.0.0.1 only) for the perfops test suite.

Each class has ``start()`` (returns self), ``stop()`` and context-manager support; see the module
docstrings for what was verified against the real clients and the pitfalls found.
"""

from .moto import BotoClientKwargs, MotoServer
from .ports import free_port
from .prometheus import MetricSeries, PrometheusServer, Sample, openmetrics_text
from .slack import DEFAULT_TOKEN, SlackRequest, SlackStandIn
from .smtp import ReceivedMessage, SmtpServer
from .unhealthy_proxy import UnhealthyProxy

__all__ = [
    "DEFAULT_TOKEN",
    "BotoClientKwargs",
    "MetricSeries",
    "MotoServer",
    "PrometheusServer",
    "ReceivedMessage",
    "Sample",
    "SlackRequest",
    "SlackStandIn",
    "SmtpServer",
    "UnhealthyProxy",
    "free_port",
    "openmetrics_text",
]
