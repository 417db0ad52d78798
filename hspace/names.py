"""Names that become paths (corpus groups, bank files, run folders): one rule for all of them."""

from __future__ import annotations

import re

from hspace.errors import HSpaceError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: object, what: str) -> str:
    """``name`` if it is safe as one path segment; otherwise an HSpaceError that says what is allowed.

    1-64 letters, digits, '_', '.' or '-', starting with a letter or digit, without '..': so a name can never
    climb out of its folder, name a hidden file or hold a separator.
    """
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise HSpaceError(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit, without '..' or slashes (it becomes a path)"
        )
    return name
