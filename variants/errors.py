"""Errors that are the user's to fix: the entry point prints them as one line, no traceback."""


class UserError(Exception):
    """A mistake in a config, a path or the data; the message names the cause and the fix."""


class NonFiniteLossError(UserError):
    """A term returned NaN or inf; the message names the step and the term."""
