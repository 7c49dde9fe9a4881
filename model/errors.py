"""The one exception type for mistakes a user can make (bad spec, bad data, bad file).

It lives in `model/` so the library can raise it on its own; `automl/` re-exports it and the
CLI prints its message without a traceback.
"""


class UserError(Exception):
    """A problem in the user's input: the message names the file, key or value and what was expected."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the run stops; its last good checkpoint stays)."""
