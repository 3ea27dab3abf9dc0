"""One exception root for the service: the CLI prints these as one line; anything else is a bug."""


class HPOError(Exception):
    """A user-facing error: bad spec, unreachable storage, missing study, impossible resources."""


class UsageError(HPOError):
    """A mistake in the command line or its inputs (a flag's value, a missing file, a task that is not one)."""


class SpecError(HPOError):
    """The job spec is malformed or invalid; the message names the field and the value."""


class StorageError(HPOError):
    """The storage URL is invalid or unreachable, or the study is missing or conflicts."""


class ClusterError(HPOError):
    """Ray cannot be reached or cannot satisfy the requested resources."""


class DashboardError(HPOError):
    """The dashboard cannot be served as asked (a non-loopback host without --allow-remote, a busy port)."""


class ModelError(HPOError):
    """A trial's trained solver cannot be had: no such trial, the trial kept none, its file is missing."""
