"""The Kubernetes work pool's base job template (deployments/kubernetes/base-job-template.json),
without a cluster: Prefect's format, every placeholder declared, defaults valid against their
schema, no secrets, and the same facts as the worker image (project dir, user, version).
tests/e2e/test_workers.py creates a work pool from it on a real Prefect server."""

from __future__ import annotations

import json
import runpy
import tomllib
from typing import Any

from prefect.utilities.schema_tools.validation import validate
from prefect.utilities.templating import apply_values, find_placeholders

from cli.commands.deploy import SECRET_MARKERS
from perfops.redaction import redact
from perfops.settings import PerfopsSettings
from tests.deploy import dockerfile
from tests.deploy.dockerfile import ROOT

TEMPLATE = ROOT / "deployments" / "kubernetes" / "base-job-template.json"
# The block names every doc uses, as deployments/create_blocks.py saves them by default (a
# script, not a package: loaded by path).
DEFAULT_NAMES: dict[str, str] = runpy.run_path(
    str(ROOT / "deployments" / "create_blocks.py"), run_name="create_blocks"
)["DEFAULT_NAMES"]


def _template() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(TEMPLATE.read_text(encoding="utf-8"))
    return data


def _defaults(template: dict[str, Any]) -> dict[str, Any]:
    properties = template["variables"]["properties"]
    return {name: spec["default"] for name, spec in properties.items() if "default" in spec}


def test_every_placeholder_is_a_declared_variable_and_every_default_fits_its_schema() -> None:
    template = _template()
    assert set(template) == {"job_configuration", "variables"}
    # What the Prefect server checks on `prefect work-pool create --base-job-template`.
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    declared = set(template["variables"]["properties"])
    assert used <= declared, f"undeclared: {used - declared}"
    assert {"image", "env", "namespace", "command", "config_map"} <= used
    assert validate(_defaults(template), template["variables"]) == []


def test_the_job_environment_names_blocks_and_settings_never_secrets() -> None:
    env: dict[str, str] = _defaults(_template())["env"]
    for name, value in env.items():
        assert not any(marker in name.upper() for marker in SECRET_MARKERS), name
        assert redact(value) == value, f"{name} holds a password"
        assert "@" not in value, f"{name}: credentials in a URL"
    # The block names are the settings the flows read, with the names every doc uses.
    blocks = {k for k in env if k.endswith("_BLOCK")}
    settings = {f"PERFOPS_{f.upper()}" for f in PerfopsSettings.model_fields}
    assert blocks <= settings
    assert {env[f"PERFOPS_{system.upper()}_BLOCK"] for system in DEFAULT_NAMES} == set(
        DEFAULT_NAMES.values()
    )
    assert env["PREFECT_API_URL"].endswith("/api")


def test_the_job_runs_the_worker_image_as_its_user_from_its_project_dir() -> None:
    template = _template()
    defaults = _defaults(template)
    rendered = apply_values(template["job_configuration"], defaults, remove_notset=True)
    manifest = rendered["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    [container] = pod["containers"]
    image_env = dockerfile.env()

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert container["image"] == f"perfops-worker:{version}"
    env = rendered["env"]
    assert container["env"] == env
    assert env["PERFOPS_PROJECT_DIR"] == image_env["PERFOPS_PROJECT_DIR"] == dockerfile.workdir()
    assert env["PERFOPS_OUT_DIR"] == image_env["PERFOPS_OUT_DIR"]
    # The fleet file is the image's copy unless a ConfigMap is mounted and named instead.
    project = env["PERFOPS_PROJECT_DIR"]
    fleet = env["PERFOPS_FLEET_FILE"]
    assert fleet.startswith(project + "/")
    assert (ROOT / fleet.removeprefix(project + "/")).is_file()
    [mount] = container["volumeMounts"]
    [volume] = pod["volumes"]
    assert volume["name"] == mount["name"]
    assert volume["configMap"] == {"name": "perfops-config", "optional": True}

    user = [s.arguments for s in dockerfile.instructions() if s.keyword == "USER"][-1]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert manifest["spec"]["backoffLimit"] == 0, "Prefect retries, not Kubernetes"
    # Unset variables disappear rather than render as empty strings.
    assert "serviceAccountName" not in pod
    assert "cpu" not in container["resources"]["limits"]
