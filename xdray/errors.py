"""The one exception type the CLI turns into a one-line error and a non-zero exit."""


class XdrayError(Exception):
    """A problem the user can fix; the message names it and the fix, on one line."""
