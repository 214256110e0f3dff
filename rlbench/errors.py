"""Errors a user can cause. The CLI prints them as one line each and exits 2, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a suite, a path, a name); printed without a traceback."""

    def __init__(self, *messages: str) -> None:
        self.messages = [m for m in messages if m]
        super().__init__("\n".join(self.messages))
