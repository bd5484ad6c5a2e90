"""The HAProxy configuration releasegate renders once, and the per-request ring log in it.

Why a ring: HAProxy counts requests and 5xx per server (``show stat``), but for latency it only keeps averages
over the last 1,024 requests, which say nothing about p95. It can, however, log every request into an in-memory
ring buffer that the runtime API streams (``show events <ring> -w``), over the same stats socket releasegate
already steers it through: no syslog daemon, no file, nothing to rotate. Each line names the server slot (the
router knows which version each slot serves), the status and the time taken::

    rg1 shop v1_0 200 12 1718000000123 4242 1977

(``rg1`` marks the format; then ``%b`` backend, ``%s`` server, ``%ST`` status, ``%Ta`` active time in ms: from
the first byte of the request to the last byte of the answer; ``%[date(0,ms)]`` when the line was written, in ms
since the epoch; ``%pid`` and ``%rt``, the process and its request counter, which tell a line seen twice.)

A configuration the operator owns (the file existed, so releasegate did not render it) needs the same lines:
``ring_lines`` gives them, and the metric source and ``preflight`` quote them when HAProxy has no such ring.
"""

from __future__ import annotations

import re
from pathlib import Path

from releasegate.spec.routers_haproxy import HaproxyRouter as HaproxyRouterSpec

RING_SIZE = 1 << 20
"""1 MiB: about 17,000 lines, seconds of traffic even at 10,000 requests/s, for a reader that fell behind."""
LOG_FORMAT = "rg1 %b %s %ST %Ta %[date(0,ms)] %pid %rt"
"""The fields the metric source reads; they may also end a longer log-format of the operator's own."""


def backend_name(spec: HaproxyRouterSpec, service: str) -> str:
    return spec.backend.replace("{service}", service)


def ring_name(spec: HaproxyRouterSpec, service: str) -> str:
    return f"rg_{backend_name(spec, service)}"


def slot_name(group: int, n: int) -> str:
    return f"v{group}_{n}"


def ring_section(spec: HaproxyRouterSpec, service: str) -> list[str]:
    return [f"ring {ring_name(spec, service)}", f'    description "releasegate: one line per request of {service}"',
            "    format raw", "    maxlen 512", f"    size {RING_SIZE}"]


def frontend_log_lines(spec: HaproxyRouterSpec, service: str) -> list[str]:
    return [f"    log ring@{ring_name(spec, service)} format raw daemon", f'    log-format "{LOG_FORMAT}"']


def ring_lines(spec: HaproxyRouterSpec, service: str) -> str:
    """What an operator adds to a configuration of their own, as one line (for a wait reason or a preflight)."""
    section = " / ".join(line.strip() for line in ring_section(spec, service))
    frontend = " / ".join(line.strip() for line in frontend_log_lines(spec, service))
    return (f"add the section '{section}' and, in the frontend that uses backend {backend_name(spec, service)}, "
            f"'{frontend}' (or end its own log-format with those fields), then reload haproxy")


def ring_listed(show_events: str, ring: str) -> bool:
    """Whether ``show events`` (the list of sinks) has ``ring``: a line ``    <name> : type=buffer, ...``."""
    return re.search(rf"^\s*{re.escape(ring)}\s*:\s*type=buffer", show_events, re.M) is not None


def missing_ring(spec: HaproxyRouterSpec, service: str) -> str:
    """Why HAProxy has no ring for ``service``, with the fix: a reload when the file already has the ring
    section (rendered by releasegate, or added by hand), else the lines to add."""
    ring = ring_name(spec, service)
    config = Path(spec.config_file).absolute()
    try:
        text = config.read_text(encoding="utf-8")
    except OSError:
        text = ""
    if re.search(rf"^\s*ring\s+{re.escape(ring)}\s*$", text, re.M):
        return (f"HAProxy has no ring {ring} for per-request latency, though {config} declares it: reload haproxy "
                "with that file")
    return f"HAProxy has no ring {ring} for per-request latency ({config} does not declare it): " \
           + ring_lines(spec, service)


def render_config(spec: HaproxyRouterSpec, service: str, max_versions: int = 3) -> str:
    """The whole configuration: a frontend on ``listen`` that logs every request into the service's ring, and one
    backend of ``max_versions * slots`` servers, all disabled until the runtime API enables them; ``retries`` +
    ``option redispatch`` let a request whose connection fails on a just-removed server go to another one
    instead of failing."""
    backend = backend_name(spec, service)
    config = Path(spec.config_file).absolute()
    servers = "\n".join(f"    server {slot_name(g, n)} 127.0.0.1:1 disabled weight 0 cookie {slot_name(g, n)}"
                        for g in range(max_versions) for n in range(spec.slots))
    ring = "\n".join(ring_section(spec, service))
    log = "\n".join(frontend_log_lines(spec, service))
    return f"""# rendered by releasegate for {service}; servers are steered through the runtime API
global
    stats socket {Path(spec.stats_socket).absolute()} mode 600 level admin
    server-state-file {server_state_path(config)}

# one line per request, streamed over the stats socket: per-version latency percentiles
{ring}

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 2
    option redispatch
    load-server-state-from-file global

frontend rg_{backend}
    bind {spec.listen}
{log}
    default_backend {backend}

backend {backend}
    balance roundrobin
    http-reuse safe
    cookie rg_srv insert indirect nocache
{servers}
"""


def server_state_path(config_file: Path) -> Path:
    return config_file.with_name(config_file.name + ".servers")


def state_path(config_file: Path) -> Path:
    return config_file.with_name(config_file.name + ".releasegate.json")
