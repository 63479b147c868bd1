#!/bin/sh
# The worker image's Python install, in one place: deployments/worker/Dockerfile runs it, and
# tests/deploy/test_worker_image.py runs the same script in a clean virtual environment (there is
# no container runtime on the development machine). From the project directory:
#
#   sh deployments/worker/install.sh deps      # pyproject.toml + uv.lock only: the dependencies
#   sh deployments/worker/install.sh project   # then the project itself (the rest of the tree)
#
# Both install exactly what uv.lock pins (--frozen: the lock is used as is, never re-resolved)
# without the dev group (pytest, moto, ruff, mypy). The venv is .venv in the project directory.
set -eu

case "${1:-}" in
  deps) exec uv sync --frozen --no-dev --no-install-project ;;
  project) exec uv sync --frozen --no-dev ;;
  *)
    echo "usage: install.sh deps|project" >&2
    exit 2
    ;;
esac
