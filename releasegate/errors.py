"""The error types that reach a user, each carrying the exit code of the CLI contract.

Exit codes (docs/cli.md): 0 success or promoted, 1 internal error, 2 invalid input or refused by policy,
3 rolled back or aborted. Anything the user can fix is a ``UserError``: printed as one line, never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INVALID = 2
EXIT_ROLLED_BACK = 3


class ReleasegateError(Exception):
    """Base class; ``exit_code`` is what the CLI returns when this escapes a command."""

    exit_code = EXIT_INTERNAL


class UserError(ReleasegateError):
    """Bad input or a refused request: the message names the place and the fix."""

    exit_code = EXIT_INVALID


class ProviderError(ReleasegateError):
    """A platform, router or metric source failed; the rollout pauses or aborts with this as the reason."""

    exit_code = EXIT_INTERNAL


class HostUnreachable(ProviderError):
    """A host of an SSH fleet could not be reached or would not let us in (refused, timed out, unknown or changed
    host key). What runs there is unknown, not dead: the controller holds or retries instead of rolling back or
    restarting (docs/ssh.md)."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(message)
        self.host = host
