"""CPU priority of background work that shares a machine with a database."""

from __future__ import annotations

import os
import sys
import threading

MAX_NICENESS = 19


def lower_thread_priority(niceness: int) -> bool:
    """Run the calling thread (and the threads it starts from now on, such as pyarrow's pools
    created on first use) at CPU `niceness` 0-19, never raising its priority. Linux only, where
    niceness is per thread; elsewhere, or for niceness 0, nothing changes. Returns whether it
    changed.

    A thread pool passes this as its `initializer`: its threads yield the CPU to the database's
    own sessions when the work runs on the database host, and cost nothing elsewhere.
    """
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        wanted = min(niceness, MAX_NICENESS)
        if current >= wanted:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, wanted)
    except OSError:  # a sandbox that forbids it: the work runs at normal priority
        return False
    return True
