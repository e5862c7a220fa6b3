"""Errors that are the user's to fix: the entry point prints them as one line, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake in a config, a path or the data; the message names the cause and the fix."""


class NonFiniteLossError(UserError):
    """A term returned NaN or inf; the message names the step and the term."""


def exit_on_user_error(main: Callable[[], object]) -> None:
    """Run an entry point: a UserError prints one ``error:`` line and exits with 2
    (``CLIP_VARIANTS_TRACEBACK=1`` shows the traceback instead)."""
    try:
        main()
    except UserError as error:
        if os.environ.get("CLIP_VARIANTS_TRACEBACK"):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
