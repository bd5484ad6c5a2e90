#!/usr/bin/env python3
"""Judgify's production smoke tests, reduced to a gateway check (standard library only).

    python3 production_smoke_tests.py --base-url http://127.0.0.1:8000 [--output-json /tmp/smoke_results.json]

Exit 0 when every check passes; with --output-json, writes {"success": true|false, "checks": [...]}.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--output-json")
    args = parser.parse_args()
    checks = []
    for path in ("/health", "/", "/api/items"):
        try:
            with urllib.request.urlopen(args.base_url.rstrip("/") + path, timeout=10) as resp:
                ok, status = resp.status == 200, resp.status
        except (urllib.error.URLError, OSError) as exc:
            ok, status = False, str(exc)
        checks.append({"path": path, "ok": ok, "status": status})
        print(f"{'ok  ' if ok else 'FAIL'} GET {path} -> {status}")
    success = all(c["ok"] for c in checks)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"success": success, "checks": checks}, f)
    return 0 if success else 1


if __name__ == "__main__":
    sys.exit(main())
