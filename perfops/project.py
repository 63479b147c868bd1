"""The deployments' pull step: move a run into the perfops checkout named by
`PERFOPS_PROJECT_DIR` in the worker's environment, read when the run starts.

prefect.yaml names this step instead of `set_working_directory: "{{ $PERFOPS_PROJECT_DIR }}"`,
which `prefect deploy` resolves on the deploying machine and bakes into the deployment. A worker
that cannot see the project fails the run with a message naming the variable (in the run's state,
where the UI shows it) instead of crashing on a temporary path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

VARIABLE = "PERFOPS_PROJECT_DIR"


def project_dir_problem(value: str | None) -> str | None:
    """Why `value` is not a usable perfops checkout, or None when it is."""
    if not value:
        return (
            f"{VARIABLE} is not set in this worker's environment: set it to the perfops checkout "
            "the worker runs (e.g. Environment=PERFOPS_PROJECT_DIR=/srv/perfops in its service "
            "unit; docs/deployments.md)"
        )
    path = Path(value)
    if not path.is_dir():
        return f"{VARIABLE}={value} does not exist on this worker"
    if not (path / "prefect.yaml").is_file() or not (path / "flows").is_dir():
        return f"{VARIABLE}={value} is not a perfops checkout (no prefect.yaml and flows/ there)"
    return None


def _fail_run(message: str) -> None:
    """Mark this run Failed with `message` (the worker then only sees a process exit code)."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Failed(message=message), force=True)


def enter_project_dir() -> dict[str, str]:
    """Pull step: chdir into `PERFOPS_PROJECT_DIR`; returns {"directory": ...}."""
    value = os.environ.get(VARIABLE)
    problem = project_dir_problem(value)
    if problem is not None:
        try:
            _fail_run(problem)
        except Exception as exc:  # noqa: BLE001 - the error below still ends the run
            logging.getLogger(__name__).warning("could not mark the run Failed: %s", exc)
        raise RuntimeError(problem)
    directory = str(Path(str(value)).resolve())
    os.chdir(directory)
    return {"directory": directory}
