"""The two ways a run ends on purpose: a mistake the user can fix (exit 2), or a signal (exit 128 + signal).

Both are reported as one line by the CLI, never as a traceback.
"""


class UserError(Exception):
    """Bad input a user can fix (config key, data file, model path). The CLI prints the message
    as one line and exits with code 2; anything else is a bug and keeps its traceback."""


class Stopped(BaseException):
    """A signal ended the run (BaseException, like KeyboardInterrupt: no `except Exception` in a
    library swallows it). The CLI prints the message (rank 0) and exits with `exit_code`."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum
