"""The worker image (deployments/worker/Dockerfile), without a container runtime: the file's facts
that matter, and its install script run on the files the Dockerfile copies, in the same order, into
a clean virtual environment, which must then import every flow and run `prefect`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy import dockerfile
from tests.deploy.dockerfile import INSTALL_SCRIPT, ROOT

INSTALL_TIMEOUT_S = 240


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _locked_version(package: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    [version] = [p["version"] for p in lock["package"] if p["name"] == package]
    return str(version)


def test_the_dockerfile_installs_the_lock_with_the_tested_script_as_a_non_root_user() -> None:
    steps = dockerfile.instructions()
    keywords = [s.keyword for s in steps]
    assert steps[0] == dockerfile.Instruction("FROM", "python:3.11-slim")

    # uv from PyPI at a pinned version.
    uv_version = dockerfile.arg("UV_VERSION")
    assert uv_version and re.fullmatch(r"\d+\.\d+\.\d+", uv_version), uv_version
    assert any(
        s.keyword == "RUN" and 'pip install --no-cache-dir "uv==${UV_VERSION}"' in s.arguments
        for s in steps
    )

    # The lock and pyproject are copied, and the dependencies installed from them, before any
    # of the project: that layer is only rebuilt when the dependencies change.
    copies = [(i, s.words()) for i, s in enumerate(steps) if s.keyword == "COPY"]
    runs = [(i, s) for i, s in enumerate(steps) if s.keyword == "RUN"]
    install_runs = [i for i, s in runs if INSTALL_SCRIPT in s.words()]
    assert dockerfile.install_phases() == ["deps", "project"]
    first_copy = copies[0][1]
    assert first_copy[:-1] == ["pyproject.toml", "uv.lock"], first_copy
    before_deps = {w for i, words in copies if i < install_runs[0] for w in words[:-1]}
    assert before_deps == {"pyproject.toml", "uv.lock", INSTALL_SCRIPT}, before_deps

    # Every Python install goes through the script the next test runs, which syncs the lock as
    # is (--frozen) without the dev group.
    for _, step in runs:
        if INSTALL_SCRIPT not in step.words():
            assert "uv sync" not in step.arguments and "uv pip" not in step.arguments, step
            assert "pip install" not in step.arguments or "uv==" in step.arguments, step
    script = (ROOT / INSTALL_SCRIPT).read_text(encoding="utf-8")
    syncs = [line for line in script.splitlines() if "uv sync" in line]
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs), syncs

    # The project: every package pyproject.toml builds, and what the pull step and flows read.
    copied = {w.rstrip("/") for _, words in copies for w in words[:-1]}
    wheel = _pyproject()["tool"]["hatch"]["build"]["targets"]["wheel"]  # type: ignore[index]
    missing = set(wheel["packages"]) - copied
    assert not missing, f"packages the image does not copy: {missing}"
    assert {"prefect.yaml", "README.md", "deployments", "data"} <= copied

    # PERFOPS_PROJECT_DIR is where the project is in the image.
    env = dockerfile.env()
    assert env["PERFOPS_PROJECT_DIR"] == dockerfile.workdir() == "/opt/perfops"
    assert env["PATH"].startswith(f"{env['PERFOPS_PROJECT_DIR']}/.venv/bin:")

    # A non-root user (numeric, so Kubernetes' runAsNonRoot can check it) after the last RUN
    # and before CMD; the default command is a process worker on the deployments' pool.
    users = [i for i, k in enumerate(keywords) if k == "USER"]
    assert users, "no USER: the image would run as root"
    user = steps[users[-1]].arguments
    assert user.isdigit() and int(user) != 0, user
    assert users[-1] > max(i for i, _ in runs)
    assert keywords[-1] == "CMD" and users[-1] < len(keywords) - 1
    command = json.loads(steps[-1].arguments)
    pool = yaml.safe_load((ROOT / "prefect.yaml").read_text())["definitions"]["work_pools"]
    name = pool["perfops_process"]["name"]
    assert command == ["prefect", "worker", "start", "--pool", name, "--limit", "2"]

    bad = subprocess.run(["sh", str(ROOT / INSTALL_SCRIPT)], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_every_process_worker_the_docs_start_has_a_limit() -> None:
    """Without --limit a process worker takes every waiting run in one poll, so one worker took
    every share of a spread fleet run (docs/fleet.md): the README, the docs, the image and the
    systemd unit start process workers with one."""
    started = re.compile(r"prefect\"?,? \"?worker\"?,? \"?start\b[^\n`]*")
    found = 0
    for path in [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted(p for p in (ROOT / "deployments").rglob("*") if p.is_file()),
    ]:
        for match in started.finditer(path.read_text(errors="ignore")):
            line = match.group(0)
            if "perfops-process" in line and "--limit" not in line.replace('"', ""):
                raise AssertionError(f"{path.relative_to(ROOT)}: {line}")
            found += "perfops-process" in line
    assert found >= 4  # README, production.md, the Dockerfile, the systemd unit


def _pinned_uv(tmp_path: Path, version: str) -> Path:
    """A directory holding uv at the Dockerfile's version: the machine's own when it is that
    version, else one installed from PyPI (as the image does)."""
    found = shutil.which("uv")
    if found:
        said = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
        if said.stdout.split()[1:2] == [version]:
            return Path(found).parent
    tools = tmp_path / "uv-tool"
    subprocess.run([sys.executable, "-m", "venv", str(tools)], check=True)
    subprocess.run([str(tools / "bin" / "pip"), "install", "--quiet", f"uv=={version}"], check=True)
    return tools / "bin"


def _replay(project: Path, env: dict[str, str]) -> list[str]:
    """The Dockerfile's COPY and install-script RUN steps, in order, with `project` as the
    WORKDIR (the other RUN steps, uv and the user, are checked above); the phases run."""
    workdir = Path(dockerfile.workdir())
    ran = []
    for step in dockerfile.instructions():
        words = step.words()
        if step.keyword == "COPY":
            *sources, dest = words
            target = project / (
                Path(dest).relative_to(workdir) if Path(dest).is_absolute() else Path(dest)
            )
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(origin, target, dirs_exist_ok=True, ignore=ignore)
                else:
                    into_dir = dest.endswith("/") or len(sources) > 1
                    path = target / origin.name if into_dir else target
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, path)
        elif step.keyword == "RUN" and INSTALL_SCRIPT in words:
            phase = words[words.index(INSTALL_SCRIPT) + 1 :]
            done = subprocess.run(
                ["sh", INSTALL_SCRIPT, *phase],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
            assert done.returncode == 0, f"install.sh {phase}:\n{done.stdout}\n{done.stderr}"
            ran.append(" ".join(phase))
    return ran


CHECK = """
import importlib, importlib.util, json, pkgutil, sys
import flows
modules = sorted(m.name for m in pkgutil.iter_modules(flows.__path__))
files = [importlib.import_module("flows." + m).__file__ for m in modules]
from perfops.project import project_dir_problem
from perfops.settings import PROJECT_DIR
print(json.dumps({
    "prefix": sys.prefix,
    "modules": modules,
    "files": files,
    "project_dir": str(PROJECT_DIR),
    "problem": project_dir_problem(str(PROJECT_DIR)),
    "dev": [m for m in ("pytest", "moto", "ruff", "mypy") if importlib.util.find_spec(m)],
}))
"""


@pytest.mark.timeout(INSTALL_TIMEOUT_S * 2)
def test_the_install_script_makes_a_clean_venv_that_runs_the_flows(tmp_path: Path) -> None:
    image_env = dockerfile.env()
    uv_dir = _pinned_uv(tmp_path, str(dockerfile.arg("UV_VERSION")))
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "PYTHONHOME"}
        and not k.startswith(("PERFOPS_", "PREFECT_"))
    }
    # The image's uv settings (no Python downloads, copies, bytecode compiled) and its uv;
    # the machine's uv cache keeps it fast.
    install_env = {
        **base,
        **{k: v for k, v in image_env.items() if k.startswith("UV_")},
        "PATH": f"{uv_dir}{os.pathsep}{base.get('PATH', '')}",
    }
    project = tmp_path / "opt-perfops"
    project.mkdir()
    assert _replay(project, install_env) == ["deps", "project"]
    venv = project / ".venv" / "bin"

    elsewhere = tmp_path / "elsewhere"  # nothing importable from the working directory
    elsewhere.mkdir()
    run_env = {**base, "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    checked = subprocess.run(
        [str(venv / "python"), "-c", CHECK],
        cwd=elsewhere,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    found = json.loads(checked.stdout)
    assert Path(found["prefix"]) == project / ".venv"
    assert "refresh_stale_statistics" in found["modules"], found["modules"]
    expected = {p.stem for p in (ROOT / "flows").glob("*.py") if p.stem != "__init__"}
    assert set(found["modules"]) == expected
    assert all(Path(f).is_relative_to(project) for f in found["files"]), found["files"]
    # Installed editable: the defaults that live in the tree (deployments/fleet.yaml, the CSV
    # trace, prefect.yaml for the pull step) resolve inside the image's PERFOPS_PROJECT_DIR.
    assert Path(found["project_dir"]) == project
    assert found["problem"] is None, found["problem"]
    assert found["dev"] == [], "the dev group is not installed"

    version = subprocess.run(
        [str(venv / "prefect"), "--version"],
        cwd=elsewhere,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == _locked_version("prefect")
    cli = subprocess.run(
        [str(venv / "perfops"), "--help"],
        cwd=elsewhere,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert cli.returncode == 0 and "deploy" in cli.stdout, cli.stderr
