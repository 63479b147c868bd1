"""perfops' connection blocks. Register them with `prefect block register -m blocks`.

perfops writes blocks only where nothing upstream fits. For S3 it uses prefect-aws
(`AwsCredentials`, `S3Bucket`); for SMTP, prefect-email (`EmailServerCredentials`).
"""

from blocks.cdn import CdnTarget
from blocks.load_target import LoadTarget
from blocks.postgres import PostgresTarget
from blocks.prometheus import PrometheusSource
from blocks.redis_target import RedisTarget
from blocks.slack import SlackEscalationTarget

__all__ = [
    "CdnTarget",
    "LoadTarget",
    "PostgresTarget",
    "PrometheusSource",
    "RedisTarget",
    "SlackEscalationTarget",
]
