"""A report as Markdown, HTML or JSON: the two texts from jinja2 templates shipped in this package.

Why templates: the post-mortem follows a document template people know (MegaCity's), and its wording should be
editable without touching the code that gathers the numbers. HTML is autoescaped (service names, reasons and
operators' words end up in a page the dashboard links); Markdown is not.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import jinja2

from releasegate.reports.model import Report

Format = Literal["md", "html", "json"]
FORMATS: tuple[Format, ...] = ("md", "html", "json")
MEDIA = {"md": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8", "json": "application/json"}
_TEMPLATES = Path(__file__).parent / "templates"


def when(ts: float | None) -> str:
    """UTC, to the second: a report is read by people in several time zones."""
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _environment(html: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=html,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters["when"] = when
    env.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    return env


def render(report: Report, fmt: Format, *, postmortem_only: bool = False) -> str:
    """The report (or only its post-mortem draft) in ``fmt``."""
    if fmt == "json":
        data = report.postmortem if postmortem_only else report
        return data.model_dump_json(indent=2) + "\n" if data is not None else "null\n"
    name = ("postmortem" if postmortem_only else "report") + (".html.j2" if fmt == "html" else ".md.j2")
    return _environment(fmt == "html").get_template(name).render(r=report, pm=report.postmortem)
