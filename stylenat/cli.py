"""Shared by the entry points: turn expected user errors into one line on stderr instead of a traceback."""

import functools
import os
import sys

# Errors that describe bad input (paths, configs, checkpoints, data); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


def user_errors_to_exit(fn):
    """Decorator: print `error: <message>` and exit 2 on a user error. STYLENAT_DEBUG=1 re-raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as err:
            if os.environ.get("STYLENAT_DEBUG"):
                raise
            message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
            print(
                f"error: {message.strip().splitlines()[0] if message.strip() else type(err).__name__}",
                file=sys.stderr,
            )
            sys.exit(2)

    return wrapper
