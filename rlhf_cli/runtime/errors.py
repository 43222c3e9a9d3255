"""The one exception type for mistakes in the user's input (recipe, data, paths).

The CLI turns a `UserError` into one printed sentence and exit code 2, with no traceback (`--debug` shows it).
Everything else is a bug or an environment problem and exits 1.
"""


class UserError(Exception):
    """Wrong user input: the message says what is wrong and how to fix it."""

    exit_code = 2


def is_input_error(err: BaseException) -> bool:
    """A mistake in the input, caught by the checks before anything was written (exit code 2); a UserError with another
    exit code (a non-finite loss stops a run that has written checkpoints) is not."""
    return isinstance(err, UserError) and err.exit_code == 2
