import threading
from contextvars import copy_context

from perfops import progress


def test_reports_reach_the_listener_and_its_threads_only_while_listening() -> None:
    seen: list[tuple[str, int, int]] = []
    progress.report("before", 0, 1)  # nobody listening: nothing happens
    with progress.listening(lambda *step: seen.append(step)):
        progress.report("archived a", 1, 2)
        context = copy_context()
        worker = threading.Thread(target=context.run, args=(progress.report, "archived b", 2, 2))
        worker.start()
        worker.join()
    progress.report("after", 1, 1)
    assert seen == [("archived a", 1, 2), ("archived b", 2, 2)]
