"""The perfops exception tree.

Every message names what was wrong and what to do about it. The CLI prints `str(exc)` as one line
(after redaction) and exits 1; usage errors exit 2.
"""


class PerfopsError(Exception):
    """Base class for errors perfops raises on purpose."""


class ConfigurationError(PerfopsError):
    """A setting, flag or block is missing or malformed."""


class BlockNotFound(ConfigurationError):
    """A block name (a flow parameter or a `PERFOPS_*_BLOCK` variable) names no saved block of
    its type; the message lists the saved ones, or how to create one."""


class ConnectionFailed(PerfopsError):
    """An outside system could not be reached or refused the credentials."""


class MissingPrerequisite(PerfopsError):
    """A server lacks something perfops needs (an extension, a preload library, a permission)."""


class LockBusy(PerfopsError):
    """Another run holds the advisory lock for the same work; nothing was changed."""


class ChecksumMismatch(PerfopsError):
    """An object read back from storage does not match the checksum recorded when it was written."""


class ReadOnlyServer(PerfopsError):
    """A write was requested on a server in recovery (a replica)."""


class RunFailed(PerfopsError):
    """A run whose work failed: the message says what and why, `report` holds what the flow
    found and did (the artifact's content). It is the data of the Failed state a flow ends with
    (`tasks.records.end_run`), as Prefect expects a Failed state's data to be an exception."""

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[type["RunFailed"], tuple[str, object]]:
        return (RunFailed, (str(self), self.report))


def report_of(result: object) -> object:
    """A run's result as its callers want it: the report of a run that failed (`RunFailed`),
    else the result itself."""
    return result.report if isinstance(result, RunFailed) else result
