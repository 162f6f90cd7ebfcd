"""Error and warning classes of the data package (one place, so callers can catch them)."""

_WORKER_PREFIX = "Caught DatasetError "


class DatasetError(ValueError):
    """A data set path, layout, option or image that cannot be used; the message names the bad value.

    A DatasetError raised in a DataLoader worker reaches the main process re-built by torch with a
    multi-line message ("Caught DatasetError in DataLoader worker process 0.", then the worker's
    traceback). Its last line is our message, so that is what this class keeps, plus where it came from:
    the error stays one line (``error: cannot decode image ... (in DataLoader worker process 0)``).
    """

    def __init__(self, message="", *args):
        if isinstance(message, str) and message.startswith(_WORKER_PREFIX) and "\n" in message:
            message = _unwrap_worker_message(message)
        super().__init__(message, *args)


def _unwrap_worker_message(text: str) -> str:
    first, _, rest = text.partition("\n")
    where = first[len(_WORKER_PREFIX) :].rstrip(".").strip()
    for line in reversed(rest.splitlines()):
        _, sep, message = line.partition("DatasetError: ")
        if sep and message.strip():
            return f"{message.strip()} ({where})" if where else message.strip()
    return first


class DatasetWarning(UserWarning):
    """A recoverable data problem (a skipped unreadable file, upscaled small images)."""
