"""The shell side of the SSH platform: POSIX sh scripts run on each host, and the parsing of what they print.

Why sh and not Python on the host: a fleet's machines are not guaranteed to have Python (they run the service's
own binary); they have a POSIX shell, awk and /proc. Each instance leaves three files in its directory on the host:
``<version>-<id>.json`` (the record: what runs, on which port, its log, written before the spawn), ``.pid`` (the
process group leader's pid and its start time in clock ticks, so a reused pid is never taken for ours) and, when
it ends on its own, ``.exit`` (its exit code, written by the wrapper shell). A restarted controller reads them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from releasegate.errors import HostUnreachable
from releasegate.providers.base import Instance

if TYPE_CHECKING:
    from releasegate.providers.platforms.ssh_connect import HostPool

STEP = 0.05  # seconds between two looks in the remote loops

# The wrapper: session leader of the instance (setsid), records itself, runs the command, records its exit code.
WRAPPER = """\
echo "$$ $(sed 's/.*) //' /proc/$$/stat | cut -d' ' -f20)" > "$1.tmp" && mv "$1.tmp" "$1"
cd "$3" 2>/dev/null || { echo "releasegate: working directory $3 does not exist"; echo 97 > "$2"; exit 97; }
sh -c "$4"
code=$?
echo "$code" > "$2"
exit "$code"
"""

PORTS = r"""
awk -v n="$1" -v seed="$2" '
FNR > 1 && $4 == "0A" { p = $2; sub(/.*:/, "", p); used[p] = 1 }
END { srand(seed); c = 0; t = 0
      while (c < n && t < 100000) { p = 20000 + int(rand() * 30000); h = sprintf("%04X", p)
        if (!(h in used) && !(p in got)) { got[p] = 1; print p; c++ }; t++ } }' /proc/net/tcp /proc/net/tcp6
"""

START = """\
d=$1 b=$2 port=$3 cwd=$4 cmd=$5 iters=$6 rec=$7 wrapper=$8
mkdir -p "$d" && d=$(cd "$d" && pwd) || exit 90
printf '%s\\n' "$rec" > "$d/$b.json.tmp" && mv "$d/$b.json.tmp" "$d/$b.json" || exit 91
rm -f "$d/$b.pid" "$d/$b.exit"
log="$d/$b.log"
printf -- '--- releasegate %s: %s on port %s: %s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$b" "$port" "$cmd" >> "$log"
while IFS= read -r kv; do [ -n "$kv" ] && export "$kv"; done
export PORT="$port" RELEASEGATE_INSTANCE="$d/$b.json"
setsid nohup sh -c "$wrapper" rg-instance "$d/$b.pid" "$d/$b.exit" "$cwd" "$cmd" >> "$log" 2>&1 < /dev/null &
i=0
while [ ! -s "$d/$b.pid" ] && [ "$i" -lt 200 ]; do sleep 0.05; i=$((i+1)); done
[ -s "$d/$b.pid" ] || { echo "nopid"; exit 0; }
read pid st < "$d/$b.pid"
hex=$(printf '%04X' "$port")
n=0
while [ "$n" -lt "$iters" ]; do
  if [ -f "$d/$b.exit" ]; then echo "exited $(cat "$d/$b.exit") $pid $st"; tail -n 3 "$log"; exit 0; fi
  if awk -v p="$hex" 'FNR > 1 && $4 == "0A" { q = $2; sub(/.*:/, "", q); if (q == p) f = 1 } END { exit !f }' \\
      /proc/net/tcp /proc/net/tcp6 2>/dev/null; then echo "listening $pid $st"; exit 0; fi
  sleep 0.05
  n=$((n+1))
done
echo "running $pid $st"
"""

LIST = """\
d=$1
[ -d "$d" ] || exit 0
for f in "$d"/*.json; do
  [ -f "$f" ] || continue
  b=${f%.json}
  state=starting pid=- code=-
  if [ -s "$b.pid" ]; then
    read pid st < "$b.pid"
    now=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f1,20)
    case "$now" in
      "Z "*|"") state=dead ;;
      *" $st") state=alive ;;
      *) state=dead ;;
    esac
  fi
  [ -f "$b.exit" ] && { code=$(cat "$b.exit"); state=dead; }
  tail=-
  [ "$state" = dead ] && tail=$(tail -n 3 "$b.log" 2>/dev/null | tr '\\t' ' ' | paste -sd '|' -)
  printf 'R\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$state" "$pid" "$code" "$tail" "$(head -n 1 "$f")"
done
"""

STOP = """\
d=$1 b=$2 n=$3
if [ -s "$d/$b.pid" ]; then
  read pid st < "$d/$b.pid"
  now=$(sed 's/.*) //' /proc/$pid/stat 2>/dev/null | cut -d' ' -f20)
  if [ -z "$now" ] || [ "$now" = "$st" ]; then
    kill -s TERM -- "-$pid" 2>/dev/null
    i=0
    while kill -0 -- "-$pid" 2>/dev/null && [ "$i" -lt "$n" ]; do sleep 0.05; i=$((i+1)); done
    kill -s KILL -- "-$pid" 2>/dev/null
    i=0
    while kill -0 -- "-$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.05; i=$((i+1)); done
    if kill -0 -- "-$pid" 2>/dev/null; then echo "survived $pid"; exit 3; fi
  fi
fi
rm -f "$d/$b.json" "$d/$b.pid" "$d/$b.exit"
echo stopped
"""

PREFLIGHT = """\
cwd=$1 prog=$2
cd "$cwd" 2>/dev/null || { echo "nocwd"; exit 0; }
case "$prog" in
  -) echo "ok shell" ;;
  */*) [ -x "$prog" ] && echo "ok $prog" || echo "noprog" ;;
  *) found=$(command -v "$prog") && echo "ok $found" || echo "noprog" ;;
esac
"""


@dataclass(frozen=True)
class Remote:
    """One record read back from a host: the instance, and what the host says about its process."""

    instance: Instance
    state: str  # alive | dead | starting (a record whose process never recorded itself)
    exit_code: int | None
    tail: str


def record(inst: Instance, command: str, cwd: str) -> str:
    """The record written on the host before the spawn (one line of JSON)."""
    return json.dumps({"service": inst.service, "version": inst.version, "id": inst.id, "host": inst.host,
                       "port": inst.port, "log": inst.log, "started_at": inst.started_at, "command": command,
                       "cwd": cwd}, separators=(",", ":"))


def parse_list(out: str, entry: str) -> list[Remote]:
    """LIST's lines; a record that cannot be read is skipped (it names no instance we could act on)."""
    found = []
    for line in out.splitlines():
        parts = line.split("\t", 5)
        if len(parts) != 6 or parts[0] != "R":
            continue
        _, state, pid, code, tail, text = parts
        try:
            data = json.loads(text)
            inst = Instance(str(data["service"]), str(data["version"]), str(data["id"]), str(data["host"]),
                            int(data["port"]), None, str(data["log"]),  # the pid is the host's: in ref
                            float(data["started_at"]), f"{entry}/{pid}")
        except (ValueError, KeyError, TypeError):
            continue
        exit_code = int(code) if code.lstrip("-").isdigit() else None
        said = "" if tail == "-" else " | ".join(p.strip() for p in tail.split("|"))
        found.append(Remote(inst, state, exit_code, said))
    return found


async def preflight(pool: HostPool, entry: str, cwd: str, program: str, limit: float) -> tuple[str, bool, str]:
    """The host answers and the command's program and working directory are there."""
    name = f"host {entry}"
    try:
        ran = await pool.run(entry, PREFLIGHT, [cwd, program], limit)
    except HostUnreachable as exc:
        return name, False, str(exc)
    said = ran.out.strip()
    if said.startswith("ok"):
        found = "" if program == "-" else f"; {program} -> {said[3:]}"
        return name, True, f"reachable, host key trusted, login accepted{found}"
    if said == "nocwd":
        return name, False, f"host {entry}: platform.cwd {cwd!r} does not exist there"
    if said == "noprog":
        return name, False, f"host {entry}: {program!r} is neither on PATH nor executable in {cwd!r} there"
    return name, False, f"host {entry}: the check failed: {(ran.out + ran.err).strip()}"
