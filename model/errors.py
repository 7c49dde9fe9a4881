"""The exception types for mistakes a user can make (bad spec, bad data, bad file) and for a diverged run.

They live in `model/` so the library can raise them on its own; `automl/` re-exports them and the
CLI prints a UserError's message without a traceback.
"""


class UserError(Exception):
    """A problem in the user's input: the message names the file, key or value and what was expected."""


class ArgumentError(UserError, ValueError):
    """A value a `model` function cannot work with, named by its keyword argument (a ValueError too).

    `argument` lets a caller that reads its own configuration (automl's spec) name its own key;
    str() gives "argument: problem".
    """

    def __init__(self, argument: str, problem: str):
        super().__init__(f"{argument}: {problem}")
        self.argument, self.problem = argument, problem


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the run stops; its last good checkpoint stays)."""
