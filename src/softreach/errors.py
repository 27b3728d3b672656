"""The one error type a user sees: a one-line message and exit code 2, never a traceback."""


class UserError(Exception):
    """Bad input or an unavailable resource, explained in one line."""
