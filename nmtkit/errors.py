"""The one exception type for mistakes a user can make (bad config, missing file, bad data)."""


class NMTKitError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class NMTKitWarning(UserWarning):
    """Something the user should know that does not stop the work (inputs truncated...)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by SIGINT or SIGTERM (after writing its checkpoint, unless a second
    signal aborted it). The CLI exits with 128 + the signal's number, 130 or 143, as shells
    and job schedulers expect of a process a signal stopped: `train && evaluate` does not go
    on. A KeyboardInterrupt, so that `except Exception` does not swallow it."""

    def __init__(self, signal_name: str, signal_number: int, checkpoint_written: bool) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = 128 + signal_number
        self.checkpoint_written = checkpoint_written
