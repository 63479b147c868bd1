"""One name for each system's block everywhere: `deployments/create_blocks.py` saves the archive
block under the name `deployments/partitions.yaml` archives to, and the docs say the same."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from decisions.partitioning import PartitionPolicy, load_policies

ROOT = Path(__file__).resolve().parent.parent


def _create_blocks() -> Any:
    """deployments/create_blocks.py, a script (no package), loaded from its path."""
    spec = importlib.util.spec_from_file_location(
        "create_blocks", ROOT / "deployments" / "create_blocks.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_archive_block_has_one_name_in_the_policies_the_defaults_and_the_docs() -> None:
    policies = load_policies((ROOT / "deployments" / "partitions.yaml").read_text())
    archives = {p.archive for p in policies if isinstance(p, PartitionPolicy) and p.archive}
    default = _create_blocks().DEFAULT_NAMES["s3"]
    assert archives == {f"s3-block:{default}"} == {"s3-block:perfops-archive"}
    production = (ROOT / "docs" / "production.md").read_text()
    assert "--name prod" not in production
    assert "--s3-block perfops-archive" in production


def test_every_system_has_a_default_block_name() -> None:
    create_blocks = _create_blocks()
    assert set(create_blocks.DEFAULT_NAMES) == set(create_blocks.RESOLVERS)
    assert all(n.startswith("perfops-") for n in create_blocks.DEFAULT_NAMES.values())
