"""The deployments' pull step: move a run into the perfops checkout named by
`PERFOPS_PROJECT_DIR` in the worker's environment, read when the run starts.

prefect.yaml names this step instead of `set_working_directory: "{{ $PERFOPS_PROJECT_DIR }}"`,
which `prefect deploy` resolves on the deploying machine and bakes into the deployment. A worker
that cannot see the project fails the run with a message naming the variable (in the run's state,
where the UI shows it) instead of crashing on a temporary path; a run whose parameters name
something its flow does not take (`{"dryrun": true}`) fails the same way, naming it.
"""

from __future__ import annotations

import ast
import logging
import os
from pathlib import Path
from typing import NoReturn
from uuid import UUID

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


def flow_parameters(source: str, function: str) -> set[str] | None:
    """The parameter names of `def function` in `source` (read, not imported); None when the
    function is not found or takes **kwargs (then any name is accepted)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            if node.args.kwarg is not None:
                return None
            args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            return {a.arg for a in args}
    return None


def unknown_parameters_problem(
    entrypoint: str | None, given: set[str], directory: Path
) -> str | None:
    """Why a run's parameters do not fit its flow (names the flow does not take), or None.
    `perfops deploy` also closes the deployment's schema (the API refuses such a run with 409);
    this holds however the deployment was made (a bare `prefect deploy` leaves it open, and
    the run would crash with only an exit code)."""
    if not entrypoint or ":" not in entrypoint or not given:
        return None
    path, _, function = entrypoint.rpartition(":")
    try:
        known = flow_parameters((directory / path).read_text(), function)
    except (OSError, SyntaxError):
        return None  # loading the flow will say what is wrong with it
    unknown = sorted(given - known) if known is not None else []
    if not unknown:
        return None
    return (
        f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: {function} "
        f"takes {', '.join(sorted(known or ()))}"
    )


def _run_parameters_problem(directory: Path) -> str | None:
    """unknown_parameters_problem for this flow run (its parameters and its deployment's
    entrypoint from the API); None outside a deployment run."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        return None
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        if run.deployment_id is None:
            return None
        entrypoint = client.read_deployment(run.deployment_id).entrypoint
    return unknown_parameters_problem(entrypoint, set(run.parameters), directory)


def _fail_run(message: str) -> None:
    """Mark this run Failed with `message` (the worker then only sees a process exit code)."""
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Failed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Failed(message=message), force=True)


def _refuse(problem: str) -> NoReturn:
    """End the run Failed saying `problem` (in its state, where the UI shows it)."""
    try:
        _fail_run(problem)
    except Exception as exc:  # noqa: BLE001 - the error below still ends the run
        logging.getLogger(__name__).warning("could not mark the run Failed: %s", exc)
    raise RuntimeError(problem)


def enter_project_dir() -> dict[str, str]:
    """Pull step: chdir into `PERFOPS_PROJECT_DIR`; returns {"directory": ...}."""
    value = os.environ.get(VARIABLE)
    problem = project_dir_problem(value)
    if problem is not None:
        _refuse(problem)
    directory = str(Path(str(value)).resolve())
    os.chdir(directory)
    try:
        problem = _run_parameters_problem(Path(directory))
    except Exception as exc:  # noqa: BLE001 - the flow's own validation still runs
        logging.getLogger(__name__).warning("could not check the run's parameters: %s", exc)
        problem = None
    if problem is not None:
        _refuse(problem)
    return {"directory": directory}
