"""moto's ``ThreadedMotoServer`` (S3, EC2, Auto Scaling, ...) on 127.0.0.1 for boto3 tests.

Clients: ``boto3.client(svc, endpoint_url=server.endpoint_url, region_name="us-east-1",
aws_access_key_id="testing", aws_secret_access_key="testing")``.

Findings with moto 5.2.5 / boto3 1.43 (verified through the server):

- The server runs in this process and shares moto's global backends, so it also shares state with
  any ``mock_aws`` used in the same process; :meth:`MotoServer.reset` clears all of it.
- It is bound with port 0 and the real port read back, so there is no free-port race.
- S3 checksums: ``put_object(..., ChecksumAlgorithm="SHA256")`` makes moto compute and store the
  SHA-256; ``get_object``/``head_object`` with ``ChecksumMode="ENABLED"`` then return
  ``ChecksumSHA256`` (as does ``get_object_attributes``). Caveats: moto only looks at the
  ``x-amz-sdk-checksum-algorithm`` header, so ``ChecksumSHA256=...`` *without*
  ``ChecksumAlgorithm`` is silently ignored (nothing stored, nothing returned), and a supplied
  value is never validated (a wrong ``ChecksumSHA256`` is accepted and echoed back; real S3
  answers ``BadDigest``). Without either argument botocore's default
  (``request_checksum_calculation="when_supported"``) stores a CRC32 checksum.
- S3 bucket names are validated (3-63 chars), as are launch template names (>= 3 chars).
- Auto Scaling needs a launch configuration or an EC2 launch template, plus
  ``AvailabilityZones`` or ``VPCZoneIdentifier`` ("At least one Availability Zone or VPC Subnet is
  required."). The AMI id is not checked. Either of these works::

      asg.create_launch_configuration(
          LaunchConfigurationName="web-lc", ImageId="ami-12345678", InstanceType="t3.micro")
      asg.create_auto_scaling_group(
          AutoScalingGroupName="web", LaunchConfigurationName="web-lc",
          MinSize=1, MaxSize=5, DesiredCapacity=2, AvailabilityZones=["us-east-1a"])

      ec2.create_launch_template(LaunchTemplateName="web-lt", LaunchTemplateData={
          "ImageId": "ami-12345678", "InstanceType": "t3.micro"})
      subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]  # moto's default VPC
      asg.create_auto_scaling_group(
          AutoScalingGroupName="web", MinSize=0, MaxSize=4, DesiredCapacity=1,
          LaunchTemplate={"LaunchTemplateName": "web-lt", "Version": "$Latest"},
          VPCZoneIdentifier=subnet)

  ``set_desired_capacity`` launches/terminates moto EC2 instances to match (``Instances`` in
  ``describe_auto_scaling_groups``). ``put_scheduled_update_group_action`` (``Recurrence``,
  ``TimeZone``, ``StartTime``, Min/Max/Desired), ``describe_scheduled_actions`` and
  ``delete_scheduled_action`` round-trip; described actions have no ``ScheduledActionARN``, and
  moto never executes scheduled actions.
"""

from __future__ import annotations

import logging
from typing import TypedDict

import httpx
from moto.server import ThreadedMotoServer

from demo.local_server import LocalServer

REGION = "us-east-1"


class BotoClientKwargs(TypedDict):
    """``boto3.client(service, **kwargs)`` arguments (typed so boto3-stubs overloads match)."""

    endpoint_url: str
    region_name: str
    aws_access_key_id: str
    aws_secret_access_key: str


class MotoServer(LocalServer):
    """moto server on 127.0.0.1:<free port> running in a background thread."""

    def __init__(self, *, quiet: bool = True) -> None:
        self.quiet = quiet
        self._server: ThreadedMotoServer | None = None
        self._endpoint_url = ""

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("MotoServer is not running")
        return self._endpoint_url

    def client_kwargs(self) -> BotoClientKwargs:
        """Keyword arguments for ``boto3.client(service, **kwargs)`` with dummy credentials."""
        return BotoClientKwargs(
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def start(self) -> MotoServer:
        if self._server is not None:
            raise RuntimeError("MotoServer already started")
        werkzeug_log = logging.getLogger("werkzeug")
        if self.quiet and werkzeug_log.level == logging.NOTSET:
            werkzeug_log.setLevel(logging.WARNING)  # no per-request access log lines
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server, self._endpoint_url = server, f"http://{host}:{port}"
        return self

    def reset(self) -> None:
        """Drop all moto state (every service, every region)."""
        httpx.post(f"{self.endpoint_url}/moto-api/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            wsgi = getattr(server, "_server", None)  # stop() leaves the listening socket open
            if wsgi is not None:
                wsgi.server_close()
