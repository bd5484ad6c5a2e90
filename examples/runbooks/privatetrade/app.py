"""PrivateTrade's backtesting simulator, reduced to what its deployment plan exercises (a Flask app).

Run it as the team does, under gunicorn:  gunicorn -w 2 -b 127.0.0.1:3001 app:app
It reads DATABASE_PATH (SQLite) and the version from RELEASEGATE_VERSION (set by releasegate's local platform)
or APP_VERSION. The schema comes from db/migrations/ only (000 is 1.9.0's). From 2.0.0 on the app serves the
"specific stock selection" endpoints, which need the columns 001_add_specific_stock_selection.sql adds: that is why
the migration runs before the new version's smoke tests.

MISBEHAVE makes chosen versions fail, for trying rollbacks: "2.1.0:error_rate=0.5" (that share of /api requests
answers 500), "2.1.0:health_after=20" (/api/health answers 503 after 20 seconds), "2.1.0:slow=2.5" (every /api
request takes 2.5 s more), "2.1.0:leak_mb=5" (each /api request keeps 5 MB more memory).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from typing import Any

from flask import Flask, jsonify, request

VERSION = os.environ.get("RELEASEGATE_VERSION") or os.environ.get("APP_VERSION", "1.9.0")
DATABASE = os.environ.get("DATABASE_PATH", "backtest.db")
STARTED = time.time()
_leaked: list[bytes] = []


def _faults() -> dict[str, float]:
    out: dict[str, float] = {}
    for entry in filter(None, os.environ.get("MISBEHAVE", "").split(";")):
        version, _, knobs = entry.partition(":")
        if version.strip() not in (VERSION, "*"):
            continue
        for knob in filter(None, knobs.split(",")):
            key, _, value = knob.partition("=")
            out[key.strip()] = float(value)
    return out


FAULTS = _faults()


def _major_minor() -> tuple[int, int]:
    parts = [*VERSION.split("."), "0", "0"][:2]
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return 0, 0


def db() -> sqlite3.Connection:
    conn = sqlite3.connect(DATABASE, timeout=10)
    conn.row_factory = sqlite3.Row
    return conn


app = Flask(__name__)


@app.before_request
def misbehave() -> Any:
    if not request.path.startswith("/api/") or request.path == "/api/health":
        return None
    if FAULTS.get("slow"):
        time.sleep(FAULTS["slow"])
    if FAULTS.get("leak_mb"):
        _leaked.append(bytearray(int(FAULTS["leak_mb"] * 1024 * 1024)))
    if FAULTS.get("error_rate") and random.random() < FAULTS["error_rate"]:
        return jsonify(error="internal error", version=VERSION), 500
    return None


@app.get("/api/health")
def health() -> Any:
    after = FAULTS.get("health_after")
    if after is not None and time.time() - STARTED > after:
        return jsonify(status="unhealthy", version=VERSION), 503
    return jsonify(status="healthy", version=VERSION, uptime=int(time.time() - STARTED))


@app.get("/api/config")
def config() -> Any:
    with db() as conn:
        rows = conn.execute("SELECT name, value FROM config ORDER BY id").fetchall()
    return jsonify(version=VERSION, config={r["name"]: r["value"] for r in rows})


@app.post("/api/backtests")
def backtest() -> Any:
    body = request.get_json(silent=True) or {}
    return jsonify(version=VERSION, symbol=body.get("symbol", "005930"), total_return=0.137, trades=42)


def _needs_2_0() -> Any:
    if _major_minor() < (2, 0):
        return jsonify(error="not found"), 404
    return None


@app.post("/api/stocks/mode")
def stock_mode() -> Any:
    if (missing := _needs_2_0()) is not None:
        return missing
    mode = (request.get_json(silent=True) or {}).get("mode", "all")
    with db() as conn:
        conn.execute("UPDATE config SET stock_mode = ?, updated_at = CURRENT_TIMESTAMP WHERE name = 'capital'",
                     (mode,))
    return jsonify(mode=mode)


@app.post("/api/stocks/specific/add")
def add_specific() -> Any:
    if (missing := _needs_2_0()) is not None:
        return missing
    code = str((request.get_json(silent=True) or {}).get("code", ""))
    with db() as conn:
        row = conn.execute("SELECT selected_specific_stocks FROM config WHERE name = 'capital'").fetchone()
        codes = [c for c in (row[0] or "").split(",") if c] if row else []
        if code and code not in codes:
            codes.append(code)
        conn.execute("UPDATE config SET selected_specific_stocks = ? WHERE name = 'capital'", (",".join(codes),))
    return jsonify(codes=codes)


@app.get("/api/stocks/specific")
def list_specific() -> Any:
    if (missing := _needs_2_0()) is not None:
        return missing
    with db() as conn:
        row = conn.execute("SELECT selected_specific_stocks FROM config WHERE name = 'capital'").fetchone()
    return jsonify(codes=[c for c in ((row[0] if row else "") or "").split(",") if c])


@app.delete("/api/stocks/specific/<code>")
def delete_specific(code: str) -> Any:
    if (missing := _needs_2_0()) is not None:
        return missing
    with db() as conn:
        row = conn.execute("SELECT selected_specific_stocks FROM config WHERE name = 'capital'").fetchone()
        codes = [c for c in ((row[0] if row else "") or "").split(",") if c]
        if code not in codes:
            return jsonify(error="not selected", code=code), 404
        codes.remove(code)
        conn.execute("UPDATE config SET selected_specific_stocks = ? WHERE name = 'capital'", (",".join(codes),))
    return jsonify(codes=codes)
