"""The AI model management backend, reduced to what its staging deployment plan exercises (a FastAPI app).

Run it as the team does:  uvicorn app:app --host 127.0.0.1 --port 8000 --workers 2
The version comes from RELEASEGATE_VERSION (set by releasegate's local platform) or APP_VERSION.

MISBEHAVE makes chosen versions fail, for trying rollbacks: "2.1.0:error_rate=0.2" (that share of /api requests
answers 500), "2.1.0:health_after=15" (/health answers 503 after 15 seconds), "2.1.0:slow=2.5" (every /api request
takes 2.5 s more), "2.1.0:burn=1" (every /api request burns CPU for that many seconds).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse

VERSION = os.environ.get("RELEASEGATE_VERSION") or os.environ.get("APP_VERSION", "1.0.0")
STARTED = time.time()


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
MODELS = [{"id": 1, "provider": "openai", "name": "gpt-4o", "status": "active"},
          {"id": 2, "provider": "anthropic", "name": "claude", "status": "active"},
          {"id": 3, "provider": "local", "name": "llama", "status": "staged"}]

app = FastAPI(title="ai-model-mgmt", version=VERSION)


async def _misbehave() -> JSONResponse | None:
    if FAULTS.get("slow"):
        await asyncio.sleep(FAULTS["slow"])
    if FAULTS.get("burn"):
        until = time.process_time() + FAULTS["burn"]
        while time.process_time() < until:
            pass
    if FAULTS.get("error_rate") and random.random() < FAULTS["error_rate"]:
        return JSONResponse({"error": "internal error", "version": VERSION}, status_code=500)
    return None


@app.get("/health")
async def health() -> JSONResponse:
    after = FAULTS.get("health_after")
    if after is not None and time.time() - STARTED > after:
        return JSONResponse({"status": "unhealthy", "version": VERSION}, status_code=503)
    return JSONResponse({"status": "healthy", "version": VERSION})


@app.get("/api/health/detailed")
async def detailed() -> JSONResponse:
    return JSONResponse({"status": "healthy", "version": VERSION, "database": "ok", "cache": "ok",
                         "uptime": int(time.time() - STARTED)})


@app.get("/api/models")
async def models() -> JSONResponse:
    if (failed := await _misbehave()) is not None:
        return failed
    return JSONResponse({"version": VERSION, "models": MODELS})


@app.get("/api/evaluations")
async def evaluations() -> JSONResponse:
    if (failed := await _misbehave()) is not None:
        return failed
    return JSONResponse({"version": VERSION, "evaluations": [{"id": 7, "model_id": 1, "score": 0.91}]})
