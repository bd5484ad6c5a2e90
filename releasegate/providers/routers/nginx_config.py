"""The text of the file the nginx router owns: rendering routes into upstreams, a bucket map and a server block
(with its JSON access log), and parsing such a file back. Pure functions; ``releasegate.providers.routers.nginx``
writes, checks and reloads the file (its docstring explains the design)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from releasegate.errors import ProviderError
from releasegate.providers.base import Routes, VersionRoute
from releasegate.spec.routers_nginx import NginxRouter as NginxRouterSpec

BUCKETS = 100
GENERATION_PATH = "/.releasegate/generation"
_ROUTE = re.compile(r"^# rg-route: (.*)$", re.M)
_GENERATION = re.compile(r"^# rg-generation: ([0-9a-f]+)$", re.M)
_UPSTREAM = re.compile(r"^upstream (\S+) \{\n((?:    .*\n)*?)\}", re.M)
_SERVER = re.compile(r"^    server (\S+)[ ;]", re.M)
_BUCKET = re.compile(r"^    (\d+) (\S+);$", re.M)
_SAFE_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def bucket_table(routes: Routes) -> list[int] | None:
    """Bucket -> index in ``routes.versions``: the built-in router's table (weight without backends cannot
    serve, so its share goes to the others, normalised); None when nothing can serve."""
    live = [(i, v.weight) for i, v in enumerate(routes.versions) if v.weight > 0 and v.backends]
    total = sum(w for _, w in live)
    if total == 0:
        return None
    table = []
    for b in range(BUCKETS):
        pos, acc = b * total // BUCKETS, 0
        for i, w in live:
            acc += w
            if pos < acc:
                table.append(i)
                break
    return table


def _ident(service: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", service)


def render(service: str, routes: Routes, spec: NginxRouterSpec) -> str:
    """The owned file for ``routes``; its first lines carry the routes and a generation (a hash of the rest)."""
    sid, cookie = _ident(service), spec.sticky_cookie
    for v in routes.versions:
        if not _SAFE_VERSION.fullmatch(v.version):
            raise ProviderError(f"version {v.version!r} cannot be written into nginx's configuration: use "
                                "letters, digits, '.', '_', '+' or '-'")
    table = bucket_table(routes)
    host = spec.listen.rsplit(":", 1)[0].strip("[]")
    allow = "".join(f" allow {a};" for a in dict.fromkeys(["127.0.0.1", "::1", host]) if a not in ("0.0.0.0", "::")
                    and re.fullmatch(r"[0-9.]+|[0-9a-fA-F:]+", a))
    body = [f"# rg-route: {json.dumps({'version': v.version, 'weight': v.weight, 'backends': list(v.backends)})}"
            for v in routes.versions]
    body.append("")
    for i, v in enumerate(routes.versions):
        if v.backends:
            servers = "".join(f"    server {b};\n" for b in dict.fromkeys(v.backends))
            body.append(f"upstream rg_{sid}_{i} {{\n{servers}    keepalive 16;\n}}")
    logs = [f"    access_log {o};\n" for o in spec.other_access_logs]
    log_file = access_log_path(spec, service)
    if table is not None:
        body.append(f'split_clients "${{request_id}}" $rg_{sid}_random {{\n'
                    + "".join(f"    1% {b};\n" for b in range(BUCKETS - 1)) + f"    * {BUCKETS - 1};\n}}")
        body.append(f"map $cookie_{cookie} $rg_{sid}_bucket {{\n"
                    f'    "~^([0-9]|[1-9][0-9])$" $1;\n    default $rg_{sid}_random;\n}}')
        body.append(f"map $rg_{sid}_bucket $rg_{sid}_upstream {{\n"
                    + "".join(f"    {b} rg_{sid}_{i};\n" for b, i in enumerate(table)) + "}")
        multi = len(set(table)) > 1
        set_cookie = f'"{cookie}=$rg_{sid}_bucket; Path=/; Max-Age=31536000"' if multi else '""'
        body.append(f"map $cookie_{cookie} $rg_{sid}_set_cookie {{\n"
                    f'    "~^([0-9]|[1-9][0-9])$" "";\n    default {set_cookie};\n}}')
        if log_file is not None:
            body.extend(_log_format(service, routes, table))
            logs.insert(0, f'    access_log "{log_file}" rg_{sid};\n')
        proxy = (f"        proxy_pass http://$rg_{sid}_upstream;\n"
                 "        proxy_http_version 1.1;\n"
                 '        proxy_set_header Connection "";\n'
                 "        proxy_set_header Host $http_host;\n"
                 "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
                 "        proxy_set_header X-Forwarded-Proto $scheme;\n"
                 f"        add_header Set-Cookie $rg_{sid}_set_cookie always;\n")
    else:
        proxy = ("        default_type text/plain;\n"
                 f'        return 503 "no routes with weight and backends for {sid}\\n";\n')
    text = "\n".join(body)
    keepalive = f"    keepalive_timeout {_nginx_time(spec.client_keepalive)};\n"
    generation = hashlib.sha256((text + keepalive + "".join(logs)).encode()).hexdigest()[:16]
    server = (f"server {{\n    listen {spec.listen};\n{keepalive}{''.join(logs)}"
              f"    location = {GENERATION_PATH} {{{allow} deny all; access_log off; default_type text/plain; "
              f'return 200 "{generation}"; }}\n'
              f"    location / {{\n{proxy}    }}\n}}\n")
    return (f"# Owned by releasegate for service {service!r}: rewritten on every route change, do not edit.\n"
            f"# rg-generation: {generation}\n{text}\n{server}")


def access_log_path(spec: NginxRouterSpec, service: str) -> Path | None:
    """The JSON access log's absolute path (relative paths are taken from the current directory, like
    ``config_file``), None when ``access_log: off``."""
    name = spec.access_log_file(service)
    return None if name is None else Path(os.path.abspath(name))


def _log_format(service: str, routes: Routes, table: list[int]) -> list[str]:
    """The version each upstream serves, and one JSON line per request (the format ``nginx_log`` reads).

    Every field but the version is a number nginx writes itself, and versions are plain (``_SAFE_VERSION``), so
    ``escape=json`` only guards against what cannot happen."""
    sid = _ident(service)
    names = "".join(f'    rg_{sid}_{i} "{routes.versions[i].version}";\n' for i in sorted(set(table)))
    return [f'map $rg_{sid}_upstream $rg_{sid}_version {{\n    default "";\n{names}}}',
            f"log_format rg_{sid} escape=json "
            f"'{{\"rg\":1,\"svc\":\"{service}\",\"v\":\"$rg_{sid}_version\",\"s\":$status,"
            f"\"t\":$request_time,\"ts\":$msec}}';"]


def _nginx_time(seconds: float) -> str:
    """``0``, whole seconds as ``60s``, else milliseconds (nginx reads no fractions): ``1500ms``."""
    if seconds <= 0:
        return "0"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def parse(text: str, service: str) -> tuple[Routes, str]:
    """(routes, generation) from an owned file; ProviderError when it is not one or was edited inconsistently."""
    gen = _GENERATION.search(text)
    if gen is None:
        raise ProviderError(f"the nginx file for {service} has no releasegate generation line: not ours or edited")
    try:
        routes = Routes.from_json({"versions": [json.loads(m) for m in _ROUTE.findall(text)]})
    except ValueError as exc:
        raise ProviderError(f"the nginx file for {service} has unreadable routes: {exc}") from None
    sid = _ident(service)
    upstreams = {name: tuple(_SERVER.findall(block)) for name, block in _UPSTREAM.findall(text)}
    versions = []
    for i, v in enumerate(routes.versions):
        applied = upstreams.get(f"rg_{sid}_{i}", ())
        if tuple(dict.fromkeys(v.backends)) != applied:
            raise ProviderError(f"the nginx file for {service}: upstream rg_{sid}_{i} serves {list(applied)}, "
                                f"its routes comment says {list(v.backends)}; edited by hand?")
        versions.append(VersionRoute(v.version, v.weight, applied))
    buckets = [f"rg_{sid}_{i}" for i in bucket_table(routes) or []]
    found = _BUCKET.findall(text.partition(f"$rg_{sid}_upstream {{")[2].partition("}")[0])
    if found != [(str(b), name) for b, name in enumerate(buckets)]:
        raise ProviderError(f"the nginx file for {service}: the bucket map does not match the routes' weights")
    return Routes(tuple(versions)), gen.group(1)
