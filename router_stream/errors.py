"""The error tree. (Placeholder root; the full tree with DLQ reasons is owned by the core work.)"""


class RouterError(Exception):
    """Root of every router-stream error."""

    retriable: bool = False


class UserError(RouterError):
    """The user's input is wrong (bad file, bad argument, unknown id): exit code 1."""
