#!/usr/bin/env python3
"""PrivateTrade's production smoke tests (deployment plan, phase 4), standard library only.

    python3 smoke_tests.py --base-url http://127.0.0.1:3001 --timeout 30

Checks what the version under test serves (asked from /api/health): the configuration, and from 2.0.0 on the four
new stock-selection endpoints. Each must answer as expected within 500 ms. Exit 0 when all pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request


def call(base: str, method: str, path: str, body: dict[str, object] | None, timeout: float) -> tuple[int, float]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    return status, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    with urllib.request.urlopen(args.base_url.rstrip("/") + "/api/health", timeout=args.timeout) as resp:
        version = json.load(resp)["version"]
    print(f"testing {args.base_url} (version {version})")
    checks: list[tuple[str, str, dict[str, object] | None, set[int]]] = [("GET", "/api/config", None, {200})]
    if tuple(int(p) for p in version.split(".")[:2]) >= (2, 0):
        checks += [("POST", "/api/stocks/mode", {"mode": "specific"}, {200}),
                   ("POST", "/api/stocks/specific/add", {"code": "005930"}, {200}),
                   ("GET", "/api/stocks/specific", None, {200}),
                   ("DELETE", "/api/stocks/specific/005930", None, {200, 404})]
    failed = 0
    for method, path, body, ok in checks:
        try:
            status, took = call(args.base_url, method, path, body, args.timeout)
        except OSError as exc:
            print(f"FAIL {method} {path}: {exc}")
            failed += 1
            continue
        good = status in ok and took < 0.5
        print(f"{'ok  ' if good else 'FAIL'} {method} {path} -> {status} in {took * 1000:.0f} ms")
        failed += not good
    print(f"{len(checks) - failed}/{len(checks)} smoke tests passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
