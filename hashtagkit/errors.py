"""The one exception type for a user's mistake.

Anything raised as `InputError` is the user's to fix (a missing file, a bad flag value, an
existing output): the CLI prints its message as one line and exits 2, never a traceback.
Anything else is our bug and keeps its traceback.
"""


class InputError(Exception):
    """Bad input from the user: the message says what is wrong and, where possible, how to fix it."""
