"""Type-check a dashboard JSON against Grafana's own published schema (the npm package ``@grafana/schema``).

Why TypeScript: Grafana itself cannot be installed here (not in Debian; only PyPI, Debian and the npm registry are
reachable), but Grafana publishes its dashboard model as TypeScript types generated from its CUE schema. The test
writes the JSON into a ``.ts`` file typed as ``Dashboard`` (and each panel as ``Panel<Options, FieldConfig>`` of its
plugin's generated types) and runs ``tsc --noEmit --strict``: an unknown key, a missing required one or a value of
the wrong type or enum is an error. Two adaptations, both loosening nothing Grafana checks itself:

- JSON has no TypeScript enums, so ``Json<T>`` turns each string enum into the union of its values (``${E}``);
- an annotation's ``target`` is typed ``DataQuery & Record<string, unknown>``, as the schema types a panel's
  targets: ``DataQuery`` is the generic default of ``AnnotationQuery<TQuery>``, which Grafana's Prometheus plugin
  instantiates with its own query type (``expr``), not shipped in ``@grafana/schema``.

The packages are installed once into ``.cache/grafana-schema`` under the repository (gitignored), under a file
lock so parallel test workers do not install twice.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "grafana-schema"
PACKAGES = ("@grafana/schema@11.6.16", "typescript@5.9.3")
"""Exact versions: the schema of the Grafana line grafana-foundation-sdk is generated for (11.6), and a tsc."""

_PANELS = {
    "timeseries": "Typed<TimeSeriesOptions, TimeSeriesField>",
    "stat": "Typed<StatOptions, Record<string, unknown>>",
    "state-timeline": "Typed<StateTimelineOptions, StateTimelineField>",
    "row": "RowPanel",
}
"""How each panel type is checked: its plugin's generated ``Options`` and ``FieldConfig`` (the schema's ``Panel``
types ``options`` as any record, so ``Typed`` puts the plugin's options in its place)."""
_RAW = "@grafana/schema/dist/esm/raw/composable"
_HEADER = f"""import type {{ AnnotationQuery, Dashboard, DataQuery, Panel, RowPanel }} from '@grafana/schema';
import type {{ Options as TimeSeriesOptions, FieldConfig as TimeSeriesField }}
  from '{_RAW}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';
import type {{ Options as StatOptions }} from '{_RAW}/stat/panelcfg/x/StatPanelCfg_types.gen';
import type {{ Options as StateTimelineOptions, FieldConfig as StateTimelineField }}
  from '{_RAW}/statetimeline/panelcfg/x/StateTimelinePanelCfg_types.gen';

type Json<T> = T extends string ? `${{T}}` : T extends (infer U)[] ? Json<U>[] : T extends object
  ? {{ [K in keyof T]: Json<T[K]> }} : T;
type Typed<O, F> = Omit<Panel<O, F>, 'options'> & {{ options?: O }};
type Annotation = Json<AnnotationQuery<DataQuery & Record<string, unknown>>>;
type Board = Json<Omit<Dashboard, 'annotations'>> & {{ annotations?: {{ list?: Annotation[] }} }};
"""


class NoRegistry(Exception):
    """npm could not reach the registry: the test skips with this reason."""


def ensure_tsc() -> Path:
    """The cached ``tsc``, installing the packages first when missing."""
    tsc = CACHE / "node_modules" / ".bin" / "tsc"
    if tsc.exists():
        return tsc
    npm = shutil.which("npm")
    if npm is None:
        raise NoRegistry("npm is not installed (scripts/test installs Debian's nodejs and npm)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tsc.exists():
            run = subprocess.run([npm, "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
                                  "--ignore-scripts", "--no-save", *PACKAGES],
                                 capture_output=True, text=True, timeout=300, check=False)
            if run.returncode != 0:
                text = run.stderr + run.stdout
                if any(w in text for w in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "network")):
                    raise NoRegistry(f"npm cannot reach the registry: {text.strip().splitlines()[-1]}")
                raise RuntimeError(f"npm install {' '.join(PACKAGES)} failed:\n{text}")
    return tsc


def typescript_of(dashboard: dict[str, Any]) -> str:
    """The ``.ts`` source that types ``dashboard`` and each of its panels by Grafana's schema."""
    lines = [_HEADER, f"export const dashboard: Board = {json.dumps(dashboard)};"]
    for n, panel in enumerate(dashboard.get("panels", [])):
        shape = _PANELS[panel["type"]]  # a panel type without a check here fails the test: add it above
        lines.append(f"export const panel{n}: Json<{shape}> = {json.dumps(panel)};")
    return "\n".join(lines) + "\n"


def type_errors(dashboards: dict[str, dict[str, Any]], workdir: Path) -> dict[str, list[str]]:
    """tsc's errors for each named dashboard (an empty list: it conforms), in one tsc run (tsc starts slowly)."""
    tsc = ensure_tsc()
    sources = {name: CACHE / f"check-{workdir.name}-{name}.ts" for name in dashboards}  # beside node_modules
    for name, source in sources.items():
        source.write_text(typescript_of(dashboards[name]), encoding="utf-8")
    try:
        run = subprocess.run([str(tsc), "--noEmit", "--strict", "--target", "es2020", "--module", "commonjs",
                              "--moduleResolution", "node", *map(str, sources.values())],
                             capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)
    finally:
        for source in sources.values():
            source.unlink()
    lines = [line for line in run.stdout.splitlines() if "error TS" in line]
    assert lines or run.returncode == 0, run.stdout + run.stderr  # tsc failed without naming an error
    return {name: [line for line in lines if line.startswith(f"{source.relative_to(ROOT)}(")]
            for name, source in sources.items()}
