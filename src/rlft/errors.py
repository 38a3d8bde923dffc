"""The one exception users see: a mistake they can fix, reported as one line with exit code 2."""


class UserError(Exception):
    """Bad input a user can fix (config key, data file, model path). The CLI prints the message
    as one line and exits with code 2; anything else is a bug and keeps its traceback."""
