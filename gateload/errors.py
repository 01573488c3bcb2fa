"""The one exception type that the CLI turns into a one-line error and exit code 2."""


class InputError(Exception):
    """Bad input from the user: a profile, acceptance file, run folder or argument.

    ``str(exc)`` is a single line that names the problem and says how to fix it.
    """
