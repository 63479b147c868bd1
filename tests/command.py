"""The `perfops` command run as a user runs it: a separate process from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERFOPS = [sys.executable, "-m", "cli"]


def run_perfops(
    *args: str,
    env: dict[str, str] | None = None,
    keep_perfops_env: bool = False,
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
    """`perfops ARGS...` with this environment (without its PERFOPS_* variables unless
    `keep_perfops_env`) updated by `env`; output captured as text, exit code not checked.
    Without PREFECT_API_URL a command uses a throwaway Prefect server, never the local one the
    CLI keeps (`env={"PERFOPS_LOCAL_SERVER": "on", ...}` to test that), and no warm process
    (`PERFOPS_WARM`)."""
    return subprocess.run(
        [*PERFOPS, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=perfops_env(env, keep_perfops_env),
        timeout=timeout,
        check=False,
    )


def perfops_env(
    env: dict[str, str] | None = None, keep_perfops_env: bool = False
) -> dict[str, str]:
    """The environment `run_perfops` gives a command (for one started another way)."""
    base = {k: v for k, v in os.environ.items() if keep_perfops_env or not k.startswith("PERFOPS_")}
    base.setdefault("PERFOPS_LOCAL_SERVER", "off")
    base.setdefault("PERFOPS_WARM", "off")  # tests/cli/test_warm.py turns it on
    return {**base, **(env or {})}
