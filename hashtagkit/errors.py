"""The one exception type for a user's mistake.

Anything raised as `InputError` is the user's to fix (a missing file, a bad value, an existing
output): the CLI prints its message as one line and exits 2, never a traceback. Anything else
is our bug and keeps its traceback.

An error about one parameter names it the way the caller spelled it: the library writes
`InputError("{param} must be float16 or float32", param="dtype")`, which reads "dtype must be
..." to a Python caller, and the CLI says "--dtype must be ..." (`InputError.naming`), mapping
the parameter to its own flag.
"""

from __future__ import annotations

PLACEHOLDER = "{param}"


class InputError(Exception):
    """Bad input from the user: the message says what is wrong and, where possible, how to fix it.

    `param`: the library parameter the error is about (its name replaces `{param}` in the
    message), so a front end can name its own option instead (`naming`)."""

    def __init__(self, message: str = "", *, param: str | None = None):
        self.template = message
        self.param = param
        super().__init__(message.replace(PLACEHOLDER, param) if param else message)

    def naming(self, name: str) -> str:
        """The message with the parameter called `name` (e.g. the CLI's `--dtype`)."""
        return self.template.replace(PLACEHOLDER, name) if self.param else str(self)
