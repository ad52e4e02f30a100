"""The one exception type for mistakes a user can make (bad config, missing file, bad data)."""


class NMTKitError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class NMTKitWarning(UserWarning):
    """Something the user should know that does not stop the work (inputs truncated...)."""
