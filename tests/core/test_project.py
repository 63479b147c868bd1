"""The pull step's parameter check: a run's parameters against its flow's signature, read from
the source without importing it (the e2e test in tests/e2e/test_production.py runs it on a
worker)."""

from __future__ import annotations

from pathlib import Path

import yaml

from perfops.project import flow_parameters, unknown_parameters_problem

ROOT = Path(__file__).resolve().parents[2]


def test_every_deployment_entrypoint_is_read_and_its_defaults_fit() -> None:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for deployment in project["deployments"]:
        path, _, function = deployment["entrypoint"].rpartition(":")
        names = flow_parameters((ROOT / path).read_text(), function)
        assert names, deployment["name"]
        defaults = set(deployment.get("parameters") or {})
        assert unknown_parameters_problem(deployment["entrypoint"], defaults, ROOT) is None


def test_an_unknown_parameter_is_named_with_what_the_flow_takes() -> None:
    problem = unknown_parameters_problem(
        "flows/evaluate_slos.py:evaluate_slos", {"dryrun", "notify"}, ROOT
    )
    assert problem is not None
    assert problem.startswith("unknown parameter dryrun: evaluate_slos takes ")
    assert "notify" in problem.split(" takes ", 1)[1]


def test_kwargs_a_missing_function_or_file_accept_anything() -> None:
    source = "def f(a, *, b=1, **rest):\n    pass\n\nasync def g(x, /, y):\n    pass\n"
    assert flow_parameters(source, "f") is None
    assert flow_parameters(source, "g") == {"x", "y"}
    assert flow_parameters(source, "h") is None
    assert unknown_parameters_problem("flows/nope.py:f", {"a"}, ROOT) is None
    assert unknown_parameters_problem(None, {"a"}, ROOT) is None
