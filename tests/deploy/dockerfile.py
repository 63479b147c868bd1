"""A small reader for deployments/worker/Dockerfile: its instructions in order, continuation lines
joined and comments dropped, and the few facts the tests check (no container runtime here)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deployments" / "worker" / "Dockerfile"
INSTALL_SCRIPT = "deployments/worker/install.sh"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ENV, ...
    arguments: str

    def words(self) -> list[str]:
        """The arguments split as a shell would, with leading `--flag=...` options dropped."""
        words = shlex.split(self.arguments)
        while words and words[0].startswith("--"):
            words.pop(0)
        return words


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    found: list[Instruction] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, f"{path}: the last instruction ends with a continuation"
    return found


def env(path: Path = DOCKERFILE) -> dict[str, str]:
    """Every ENV NAME=VALUE of the file (later ones win), with $PATH-style references kept."""
    values: dict[str, str] = {}
    for item in instructions(path):
        if item.keyword == "ENV":
            for word in shlex.split(item.arguments):
                name, _, value = word.partition("=")
                values[name] = value
    return values


def arg(name: str, path: Path = DOCKERFILE) -> str | None:
    for item in instructions(path):
        if item.keyword == "ARG" and item.arguments.partition("=")[0] == name:
            return item.arguments.partition("=")[2] or None
    return None


def workdir(path: Path = DOCKERFILE) -> str:
    [last] = [i.arguments for i in instructions(path) if i.keyword == "WORKDIR"][-1:]
    return last


def install_phases(path: Path = DOCKERFILE) -> list[str]:
    """The arguments of each RUN of the install script, in order (e.g. ["deps", "project"])."""
    phases = []
    for item in instructions(path):
        words = item.words() if item.keyword == "RUN" else []
        if INSTALL_SCRIPT in words:
            phases.append(" ".join(words[words.index(INSTALL_SCRIPT) + 1 :]))
    return phases
