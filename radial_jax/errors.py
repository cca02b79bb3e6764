"""The one error type for problems a user can fix: a config key, a path, a damaged checkpoint, data.

Each part of the package subclasses `UserError` with a message that names the key, file or value and
what to do; the `radial` command prints `error: <message>` and exits with `exit_code` (2: a usage
error) instead of a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says where and how."""

    exit_code = 2


class NotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named is missing, or holds nothing usable."""
