"""Errors that are the user's to fix, and the front door every command line goes through.

A :class:`UserError` names the cause and the fix in its message; :func:`exit_on_user_error`
prints it as one ``error:`` line and exits with 2, no traceback (``CLIP_VARIANTS_TRACEBACK=1``
shows the traceback instead). Every entry point (``python -m experiments``, ``python -m
analysis``, ``python -m datamodules.tokenizer``, ``python -m variants.pretrained``) uses it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping


class UserError(Exception):
    """A mistake in a config, a path or the data; the message names the cause and the fix."""


class NonFiniteLossError(UserError):
    """A term returned NaN or inf; the message names the step and the term."""


# Lines of jsonargparse's nested reasons that say nothing the user can act on: the alternatives
# of Optional[...] types, the union bookkeeping, the echo of the given value.
_NOISE = re.compile(
    r"Expected a path but|Does not validate against any of the Union subtypes|Subtypes: |Errors:$"
    r"|Expected a <class 'NoneType'>|Given value type: |Given value: "
)
_BULLET = re.compile(r"^\s*-\s+")


def one_line(error: BaseException) -> str:
    """The informative lines of a (possibly nested) error message, on one line."""
    lines = [_BULLET.sub("", line).strip() for line in str(error).splitlines()]
    return " ".join(line for line in lines if line and not _NOISE.match(line))


def require_at_least(prefix: str, values: Mapping[str, tuple[object, float]]) -> None:
    """Raise one UserError naming every ``name: (value, least)`` whose value is below its least
    (or not a number), each as the config key ``<prefix>.<name>`` to change."""
    bad = [
        f"{prefix}.{name} must be >= {least}, got {value!r}"
        for name, (value, least) in values.items()
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= least
    ]
    if bad:
        raise UserError("; ".join(bad))


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError behind ``error``: itself, or one it was raised from. Libraries that build our
    objects wrap what the objects raise (jsonargparse turns a datamodule's UserError into a
    ValueError listing the union's alternatives); the user's mistake is still the cause."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UserError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def exit_on_user_error(
    main: Callable[[], object], *, also: tuple[type[BaseException], ...] = (), hint: str = ""
) -> None:
    """Run a command line's ``main``. A UserError (also one wrapped by a library), or an error of
    the types in ``also`` (a parser's own errors), prints one ``error:`` line and exits with 2;
    ``hint`` follows the message of the ``also`` kinds (e.g. where the usage is)."""
    try:
        main()
    except Exception as error:
        user = user_error_in(error)
        if (user is None and not isinstance(error, also)) or os.environ.get("CLIP_VARIANTS_TRACEBACK"):
            raise
        message = one_line(user) if user is not None else f"{one_line(error)}{hint}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
