"""``run: docker`` on SSH hosts: a container per instance, through the host's docker CLI (or podman's).

Why the CLI and not the Engine API: a fleet's hosts expose SSH, not their engine's socket; the CLI is what an
operator runs there too (PrivateTrade's ``docker run -d --name backend-green -p 8001:8000``). The containers carry
labels (state id and host, service, version, instance, host port, start time), so the host's engine itself is the
record: a restarted controller lists them again, and an exited container is a dead instance with its exit code,
its OOM kill and the end of its log, until ``stop`` removes it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from releasegate.errors import HostUnreachable, ProviderError
from releasegate.providers.base import Instance
from releasegate.providers.platforms.ssh_connect import HostPool
from releasegate.providers.platforms.ssh_remote import STEP, Remote
from releasegate.spec import placeholders
from releasegate.spec.common import artifact_version
from releasegate.spec.platforms import split_host

if TYPE_CHECKING:
    from releasegate.providers.platforms.ssh_hosts import SshPlatform

ADDRESS_IN_USE = ("address already in use", "eaddrinuse", "errno 98", "port is already")

PREFIX = "releasegate."

START = """\
cli=$1 name=$2 iters=$3
shift 3
env_file=$(mktemp) || exit 90
chmod 600 "$env_file"
cat > "$env_file"
$cli rm -f "$name" >/dev/null 2>&1
$cli run -d --name "$name" --env-file "$env_file" "$@" > /dev/null 2> "$env_file.err"
rc=$?
rm -f "$env_file"
if [ "$rc" -ne 0 ]; then echo "failed $rc"; tail -n 3 "$env_file.err"; rm -f "$env_file.err"; exit 0; fi
rm -f "$env_file.err"
n=0
while [ "$n" -lt "$iters" ]; do
  state=$($cli inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$name" 2>/dev/null)
  case "$state" in
    running*|created*|"") ;;
    *) echo "exited ${state#* }"; $cli logs --tail 3 "$name" 2>&1; exit 0 ;;
  esac
  sleep 0.05
  n=$((n+1))
done
echo running
"""

LIST = """\
cli=$1 state=$2 service=$3 template=$4
ids=$($cli ps -a -q --filter "label=releasegate.state=$state" --filter "label=releasegate.service=$service") || exit 3
[ -n "$ids" ] || exit 0
for id in $ids; do
  line=$($cli inspect --format "$template" "$id" 2>/dev/null) || continue
  tail=-
  case "$(printf '%s' "$line" | cut -f2)" in
    running|created|restarting) ;;
    *) tail=$($cli logs --tail 3 "$id" 2>&1 | tr '\\t' ' ' | paste -sd '|' -) ;;
  esac
  printf 'C\\t%s\\t%s\\n' "$line" "$tail"
done
"""

TEMPLATE = "\t".join(["{{.Name}}", "{{.State.Status}}", "{{.State.ExitCode}}", "{{.State.OOMKilled}}",
                      *(f'{{{{index .Config.Labels "releasegate.{k}"}}}}' for k in
                        ("version", "instance", "host", "port", "started_at"))])

STOP = """\
cli=$1 name=$2 grace=$3
$cli stop -t "$grace" "$name" >/dev/null 2>&1
$cli rm -f "$name" >/dev/null 2>&1
if $cli inspect "$name" >/dev/null 2>&1; then echo "survived"; exit 3; fi
echo stopped
"""

PREFLIGHT = """\
cli=$1 image=$2 pull=$3
if ! said=$($cli version 2>&1 >/dev/null); then echo "nocli $(printf '%s' "$said" | tail -n 1)"; exit 0; fi
if $cli image inspect "$image" >/dev/null 2>&1; then echo "ok present"
elif [ "$pull" = never ]; then echo "noimage"
else echo "ok pull"; fi
"""


@dataclass(frozen=True)
class Run:
    """What ``docker run`` needs for one instance besides its name and environment."""

    cli: str
    image: str
    port: int  # on the host
    container_port: int
    network: str
    pull: str
    volumes: list[str]
    args: list[str] | None
    labels: dict[str, str]

    def argv(self) -> list[str]:
        out = [f"--label={k}={v}" for k, v in self.labels.items()]
        if self.network == "host":
            out += ["--network=host", f"--env=PORT={self.port}"]
        else:
            out += [f"--publish={self.port}:{self.container_port}", f"--env=PORT={self.container_port}"]
        out += [f"--volume={v}" for v in self.volumes]
        out += [f"--pull={self.pull}", self.image]
        return out + (self.args or [])


def log_of(entry: str, name: str) -> str:
    """Where a container's output is: the engine keeps it (``docker logs NAME`` on the host)."""
    return f"{entry}: docker logs {name}"


def args_for(args: list[str] | None, service: str, version: str, port: int, host: str) -> list[str] | None:
    values: dict[str, object] = {"service": service, "version": version, "port": port, "host": host}
    return None if args is None else [placeholders.substitute_text(a, values) for a in args]


def container_name(state: str, service: str, version: str, id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"rg-{state}-{service}-{version}-{id}")


def cli_words(cli: str) -> str:
    """The CLI as the scripts run it: unquoted on purpose (``env X=1 podman --root /x`` is several words)."""
    return " ".join(shlex.quote(w) for w in shlex.split(cli))


def parse_list(out: str, entry: str, service: str) -> list[Remote]:
    """LIST's lines as records: a running container is alive, an exited or dead one is a dead instance."""
    found = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) != 11 or parts[0] != "C":
            continue
        _, name, status, code, oom, version, id, host, port, started, tail = parts
        try:
            inst = Instance(service, version, id, host, int(port), None, log_of(entry, name.lstrip("/")),
                            float(started), f"{entry}/{name.lstrip('/')}")
        except ValueError:
            continue
        alive = status in ("running", "created", "restarting")
        exit_code = int(code) if code.lstrip("-").isdigit() and not alive else None
        if exit_code is not None and exit_code > 128:
            exit_code = -(exit_code - 128)
        said = "" if tail == "-" else " | ".join(p.strip() for p in tail.split("|"))
        state = "alive" if alive else "oom" if oom == "true" else "dead"
        found.append(Remote(inst, state, exit_code, said))
    return found


async def start(pool: HostPool, entry: str, run: Run, name: str, env: dict[str, str], grace: float,
                limit: float) -> tuple[str, str]:
    """``docker run -d`` on the host, then up to ``grace`` seconds watching for an early exit.
    Returns (outcome, detail): ("running", ""), ("exited", "CODE: log tail") or ("failed", "the CLI's error")."""
    iters = str(max(1, int(grace / STEP)))
    ran = await pool.run(entry, START, [cli_words(run.cli), name, iters, *run.argv()], limit,
                         input="".join(f"{k}={v}\n" for k, v in env.items()))
    lines = [line.strip() for line in ran.out.splitlines() if line.strip()]
    first = lines[0].split() if lines else ["failed", str(ran.status)]
    tail = " | ".join(lines[1:]) or ran.err.strip()
    if first[0] == "running":
        return "running", ""
    if first[0] == "exited":
        return "exited", f"{first[1] if len(first) > 1 else '?'}: {tail or '(no output)'}"
    return "failed", tail or f"exit status {first[1] if len(first) > 1 else ran.status}"


async def preflight(pool: HostPool, entry: str, cli: str, image: str, pull: str,
                    limit: float) -> tuple[str, bool, str]:
    """The host answers, its container CLI works, and the image is there (or may be pulled)."""
    name = f"host {entry}"
    try:
        ran = await pool.run(entry, PREFLIGHT, [cli_words(cli), image, pull], limit)
    except HostUnreachable as exc:
        return name, False, str(exc)
    said = ran.out.strip()
    if said == "ok present":
        return name, True, f"reachable, host key trusted, login accepted; {cli} has {image}"
    if said == "ok pull":
        return name, True, f"reachable, host key trusted, login accepted; {cli} will pull {image} (pull: {pull})"
    if said == "noimage":
        return name, False, f"host {entry}: {cli} has no image {image} and platform.pull is never: load it there " \
                            "or set pull: missing"
    if said.startswith("nocli"):
        return name, False, f"host {entry}: `{cli} version` failed: {said[6:] or 'no output'}; install it or set " \
                            "platform.docker_cli"
    return name, False, f"host {entry}: the check failed: {(ran.out + ran.err).strip()}"


async def start_instance(p: SshPlatform, entry: str, service: str, version: str, id: str, stamp: float,
                         ports: list[int]) -> Instance:
    """One container on ``entry``: the first port that is free when docker publishes it."""
    host, _ = split_host(entry)
    spec = p.spec
    name = container_name(p.state_id, service, version, id)
    artifact = artifact_version(version)  # labels and name keep a baseline's own version, the app runs its artifact
    for attempt, port in enumerate(ports, 1):
        labels = {"state": p.label(entry), "service": service, "version": version, "instance": id,
                  "host": host, "port": str(port), "started_at": repr(stamp)}
        run = Run(spec.docker_cli, spec.image_for(service, artifact), port, spec.port or port, spec.network,
                  spec.pull, spec.volumes, args_for(spec.args, service, artifact, port, host),
                  {PREFIX + k: v for k, v in labels.items()})
        env = {**p.spec_env(service, artifact, port, host), "RELEASEGATE_VERSION": artifact,
               "RELEASEGATE_SERVICE": service}
        outcome, detail = await start(p.pool, entry, run, name, env, p.startup_grace,
                                      p.startup_grace + spec.connect_timeout + 600)  # a pull takes time
        inst = Instance(service, version, id, host, port, None, log_of(entry, name), stamp, f"{entry}/{name}")
        if outcome == "running":
            return inst
        await p.stop(inst, 0.0)
        if attempt < len(ports) and any(s in detail.lower() for s in ADDRESS_IN_USE):
            continue
        if outcome == "exited":
            code, _, tail = detail.partition(": ")
            raise ProviderError(f"instance {service} {version} on host {entry}: container {name} exited with "
                                f"code {code} right after start: {tail}")
        raise ProviderError(f"instance {service} {version} on host {entry}: {spec.docker_cli} run failed: "
                            f"{detail}")
    raise AssertionError("unreachable")
