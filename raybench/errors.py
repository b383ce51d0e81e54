"""User-facing errors: raised for bad input, printed by the CLI as one line, exit code 2."""

from __future__ import annotations


class RaybenchError(Exception):
    """An error the user can fix (bad argument, missing file, wrong column...)."""
