"""User-facing errors: every command prints one ``error: ...`` line for these and exits with status 2."""
from __future__ import annotations

from typing import Optional


class UserError(Exception):
    """Bad input from the user (a file, an option, a configuration). The message names the problem and the fix."""


class ArtifactError(UserError):
    """An artifact cannot be run as it is; the message names the problem and the rebuild command."""

    def __init__(self, problem: str, rebuild_command: Optional[str] = None):
        self.problem = problem
        self.rebuild_command = rebuild_command
        fix = f"; rebuild it with: {rebuild_command}" if rebuild_command else ""
        super().__init__(f"{problem}{fix}")
