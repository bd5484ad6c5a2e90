"""Long-lived shells on a host: one SSH session runs a small loop that executes script after script.

Why: every SSH command is a new session, and a session costs the host a fork, a login shell and whatever that
shell's rc files do (a bashrc that initialises a language manager easily takes 100 ms). The controller reads every
host several times per step, so it keeps a few sessions open per host and sends each script down one of them.

Framing: a request is one line, the base64 of a complete sh program; the loop answers with three lines, the
base64 of its stdout, of its stderr, and ``RG-DONE <exit status>``. Nothing the script prints can break the frame.
"""

from __future__ import annotations

import base64
import secrets
import shlex

import asyncssh

LOOP = r"""
t=$(mktemp -d) || exit 1
trap 'rm -rf "$t"' EXIT
echo RG-READY
while IFS= read -r line; do
  printf '%s\n' "$line" | base64 -d > "$t/s" 2>/dev/null
  sh "$t/s" > "$t/o" 2> "$t/e" < /dev/null
  rc=$?
  base64 < "$t/o" | tr -d '\n'; echo
  base64 < "$t/e" | tr -d '\n'; echo
  echo "RG-DONE $rc"
done
"""


class ShellGone(Exception):
    """The session ended under us (the connection broke, the host's sshd was killed)."""


class Shell:
    """One looping session on one connection; one request at a time (the pool hands it to one caller)."""

    def __init__(self, conn: asyncssh.SSHClientConnection, process: asyncssh.SSHClientProcess[str]) -> None:
        self.conn = conn
        self.process = process

    @classmethod
    async def open(cls, conn: asyncssh.SSHClientConnection) -> Shell:
        process = await conn.create_process("sh -c " + shlex.quote(LOOP), encoding="utf-8")
        while True:  # a login shell's rc files may print before the loop starts
            line = await process.stdout.readline()
            if not line:
                raise ShellGone("the shell ended before it started")
            if line.strip() == "RG-READY":
                return cls(conn, process)

    async def call(self, script: str, args: list[str], input: str = "") -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of ``script`` with ``args`` as $1..., ``input`` on its stdin."""
        program = "set -- " + " ".join(shlex.quote(a) for a in args) + "\n"
        if input:
            end = f"RG_INPUT_{secrets.token_hex(8)}"
            program += f"{{\n{script}\n}} <<'{end}'\n{input}{'' if input.endswith(chr(10)) else chr(10)}{end}\n"
        else:
            program += script
        self.process.stdin.write(base64.b64encode(program.encode()).decode() + "\n")
        out = await self.process.stdout.readline()
        err = await self.process.stdout.readline()
        done = await self.process.stdout.readline()
        if not done.startswith("RG-DONE "):
            raise ShellGone("the shell ended in the middle of a script")
        status = done.split()[1]
        return (int(status) if status.isdigit() else -1, _decode(out), _decode(err))

    def close(self) -> None:
        self.process.close()


def _decode(line: str) -> str:
    try:
        return base64.b64decode(line.strip()).decode("utf-8", "replace")
    except ValueError:
        return line
