"""The one exception type for errors a user can cause and fix."""


class DawsolError(Exception):
    """A user-facing error: bad params, missing or corrupt data, a bad checkpoint.

    The message says what is wrong, where, and what to do. The CLI prints it as one
    line and exits non-zero without a traceback.
    """
