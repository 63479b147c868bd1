import os
import sys
import threading

import pytest

from perfops.priority import lower_thread_priority


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux")
def test_lowers_only_the_calling_thread_and_never_raises_it() -> None:
    main_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: dict[str, object] = {}

    def work() -> None:
        tid = threading.get_native_id()
        seen["changed"] = lower_thread_priority(main_nice + 5)
        seen["after"] = os.getpriority(os.PRIO_PROCESS, tid)
        seen["again"] = lower_thread_priority(main_nice + 2)  # never back up
        seen["still"] = os.getpriority(os.PRIO_PROCESS, tid)
        child: dict[str, int] = {}

        def started_later() -> None:
            child["n"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        t = threading.Thread(target=started_later)
        t.start()
        t.join()
        seen["child"] = child["n"]

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == {
        "changed": True,
        "after": main_nice + 5,
        "again": False,
        "still": main_nice + 5,
        "child": main_nice + 5,  # threads it starts (pyarrow's pools) inherit it
    }
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main_nice
    assert lower_thread_priority(0) is False
