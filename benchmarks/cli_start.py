"""How long a command takes once perfops is warm: `perfops stats refresh --dry-run` on the demo
database, with the warm command process (cli/warm.py) against a fresh process each time.

    python -m benchmarks.cli_start [--rounds 7] [--goal 2.5]

Sets up its own world as a user has it: the demo database (created and loaded if missing, as
`perfops demo` does, on 127.0.0.1:5432 or PERFOPS_BENCH_ADMIN_DSN), a scratch directory whose
`out/` holds the local Prefect server the CLI keeps (started with `perfops server start` on a
free port, stopped at the end with `perfops server stop`), and a private runtime directory for
the warm process's socket. Then, interleaved round by round, each timed as a whole command from
the shell:

1. `python -c "import prefect"`: the anchor, the floor of any fresh Python that runs a flow;
2. cold: `PERFOPS_WARM=off perfops stats refresh --dry-run` (the server warm, the process not);
3. warm: the same command with the warm process (left by a first command and ready).

It checks that the warm command served every warm round (the process's own count) and printed
what the cold one printed (the `--json` report, without its timings). The goal (issue 13): the
warm command's median at most `--goal` seconds (2.5 s). Prints a table and a summary line last;
exits 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._support import ADMIN_DSN, BIN, free_port, median, print_table, run
from demo.run import prepare_database
from demo.workload import load_workload

COMMAND = ("stats", "refresh", "--dry-run")


def _without_timings(report: dict[str, Any]) -> dict[str, Any]:
    report = {k: v for k, v in report.items() if k != "seconds"}
    report["tables"] = [
        {k: v for k, v in t.items() if k != "duration_ms"} for t in report["tables"]
    ]
    return report


def _served(runtime: Path) -> int:
    infos = [json.loads(p.read_text()) for p in runtime.glob("perfops-*/*.sock.json")]
    return sum(int(i["served"]) for i in infos)


def _wait_ready(runtime: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not list(runtime.glob("perfops-*/*.sock.json")):
        if time.monotonic() > deadline:
            logs = "\n".join(p.read_text() for p in runtime.glob("perfops-*/*.log"))
            raise SystemExit(f"the warm process was not ready in {timeout:.0f} s:\n{logs}")
        time.sleep(0.25)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--goal", type=float, default=2.5, help="warm median, seconds")
    args = parser.parse_args()

    dsn, _ = prepare_database(ADMIN_DSN)
    with psycopg.connect(dsn) as conn:
        load_workload(conn)
    work = Path(tempfile.mkdtemp(prefix="pcs", dir="/tmp"))
    runtime = work / "run"
    runtime.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERFOPS_", "PREFECT_API_URL"))}
    env.update(
        {
            "PERFOPS_DSN": dsn,
            "PERFOPS_OUT_DIR": str(work / "out"),
            "PERFOPS_LOCAL_SERVER_PORT": str(free_port()),
            "XDG_RUNTIME_DIR": str(runtime),
        }
    )
    perfops = str(BIN / "perfops")
    cold_env = {**env, "PERFOPS_WARM": "off"}
    # commands run from `work`, where a user would: the out folder beside them
    try:
        run([perfops, "server", "start"], env=cold_env, cwd=work)
        # a first command leaves the warm process; both outputs compared once
        _, first = run([perfops, *COMMAND, "--json"], env=env, cwd=work)
        _wait_ready(runtime)
        _, warm_json = run([perfops, *COMMAND, "--json"], env=env, cwd=work)
        same = _without_timings(json.loads(first.stdout)) == _without_timings(
            json.loads(warm_json.stdout)
        )
        served_before = _served(runtime)
        times: dict[str, list[float]] = {"import prefect": [], "cold": [], "warm": []}
        for _ in range(args.rounds):
            times["import prefect"].append(
                run([sys.executable, "-c", "import prefect"], env=cold_env, cwd=work)[0]
            )
            times["cold"].append(run([perfops, *COMMAND], env=cold_env, cwd=work)[0])
            times["warm"].append(run([perfops, *COMMAND], env=env, cwd=work)[0])
        served = _served(runtime) - served_before
    finally:
        run([perfops, "server", "stop"], env=env, check=False, cwd=work)
        shutil.rmtree(work, ignore_errors=True)

    print(f"perfops {' '.join(COMMAND)} on the demo database, {args.rounds} rounds, wall seconds")
    print_table(
        ["command", "median", "min", "max"],
        [[name, f"{median(t):.2f}", f"{min(t):.2f}", f"{max(t):.2f}"] for name, t in times.items()],
    )
    warm, cold = median(times["warm"]), median(times["cold"])
    print(f"warm rounds served by the warm process: {served} of {args.rounds}")
    print(f"warm output equals cold output (timings aside): {same}")
    met = warm <= args.goal and served == args.rounds and same
    print(
        f"cli_start: warm {warm:.2f} s median (goal <= {args.goal:.1f} s), cold {cold:.2f} s "
        f"({cold / warm:.1f}x), import prefect alone {median(times['import prefect']):.2f} s, "
        f"served {served}/{args.rounds}, same output {same}: {'PASS' if met else 'FAIL'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
