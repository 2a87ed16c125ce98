"""The one exception type for a user's mistake.

Anything raised as `InputError` is the user's to fix (a missing file, a bad value, an existing
output): the CLI prints its message as one line and exits 2, never a traceback. Anything else
is our bug and keeps its traceback.

A message names the library's parameters the way its reader spells them: the library writes
`InputError("{param} must be float16 or float32", param="dtype")` or, for any parameter,
`"... pass {opt:overwrite=True} to replace it"`. A Python caller reads "dtype must be ..." and
"pass overwrite=True"; the CLI renders the same error with its own flags ("--dtype must be
...", "pass --overwrite", `InputError.naming`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

_OPTION = re.compile(r"\{opt:([A-Za-z_][A-Za-z0-9_]*)(=[^}]*)?\}")


class InputError(Exception):
    """Bad input from the user: the message says what is wrong and, where possible, how to fix it.

    `param`: the library parameter the error is about (its name replaces `{param}`); any
    `{opt:name}` or `{opt:name=value}` names a parameter too (Python shows `name` or
    `name=value`), so a front end can show its own option instead (`naming`)."""

    def __init__(self, message: str = "", *, param: str | None = None):
        self.template = message.replace("{param}", f"{{opt:{param}}}") if param else message
        self.param = param
        super().__init__(self.naming())

    def naming(self, flag_of: Callable[[str], str] | None = None) -> str:
        """The message with each parameter named by `flag_of(name)` (e.g. the CLI's `--dtype`),
        or, without it, as a Python caller spells it."""
        if flag_of is None:
            return _OPTION.sub(lambda m: m.group(1) + (m.group(2) or ""), self.template)
        # a switch turned off names its negative form: {opt:lemmatize=False} -> flag_of("no_lemmatize")
        return _OPTION.sub(lambda m: flag_of(("no_" if m.group(2) == "=False" else "") + m.group(1)), self.template)
