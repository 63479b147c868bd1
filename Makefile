# perfops: the two commands a newcomer needs are `make demo` and `make test`.
# Both run scripts/setup.sh first (idempotent: Debian packages, PostgreSQL preload, Redis, .venv).
.PHONY: setup demo test lint format clean

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/perfops demo

test: setup
	.venv/bin/pytest -n 2 --dist loadfile

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
