"""User-facing errors: raised for bad input, printed by the CLI as one line, exit code 2."""

from __future__ import annotations


class RaybenchError(Exception):
    """An error the user can fix (bad argument, missing file, wrong column...)."""


class StudyIncomplete(RaybenchError):
    """A study run stopped before every trial finished (Ctrl-C); its state is saved.

    The CLI prints the message as one line and exits with 130, the code of an interrupt.
    """
