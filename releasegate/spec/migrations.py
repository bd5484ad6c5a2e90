"""``migrations:``: the database a release migrates, where its ``*.sql`` files live and where backups go.

Paths are relative to the spec file so a spec and its migrations move together. A PostgreSQL URL is checked here,
when the spec is validated, rather than after the new version passed its checks; and since it may carry a
password, every message shows it through ``mask_password``.
"""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, field_validator

from releasegate.spec import secrets
from releasegate.spec.common import SpecModel

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z]+://[^:@/?]*):(?P<password>[^@/?]*)@")
_QUERY_PASSWORD = re.compile(r"(?<=[?&])password=(?P<password>[^&]*)")


def mask_password(url: str) -> str:
    """The URL as it may be printed: a password in the authority or in ``?password=`` becomes ``***``."""
    masked = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}:***@", url, count=1)
    return _QUERY_PASSWORD.sub("password=***", masked)


def _passwords(url: str) -> list[str]:
    found = [m.group("password") for m in (_URL_PASSWORD.match(url),) if m]
    return [p for p in found + [m.group("password") for m in _QUERY_PASSWORD.finditer(url)] if p]


def postgres_problem(url: str) -> str | None:
    """Why libpq cannot use ``url`` (parsed by libpq itself, so this agrees with the later connection), or None.

    The password never appears in the answer, even when libpq quotes the part it could not read."""
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # pragma: no cover - psycopg is a dependency; without it the connection says the rest
        return None
    try:
        params = conninfo_to_dict(url)
    except ProgrammingError as exc:
        problem = " ".join(str(exc).split())
        for password in _passwords(url):
            problem = problem.replace(password, "***")
        return problem
    if not params.get("dbname"):
        return "no database name"
    return None


class Migrations(SpecModel):
    """Applied once the new version has started and before its health and smoke checks (which need its schema),
    so before any user traffic reaches it; backward compatible by rule, so the running version is unaffected."""

    # pydantic would quote the rejected URL, password included, in its error text; the messages here mask it.
    model_config = ConfigDict(**SpecModel.model_config, hide_input_in_errors=True)

    database: str = Field(description="sqlite:///PATH, relative to the spec file (sqlite:////ABS for an absolute "
                                      "path), or postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME (also "
                                      "postgres://, and libpq parameters such as ?host=/run/postgresql for a unix "
                                      "socket; without a password, PGPASSWORD or ~/.pgpass are used). A password "
                                      "may be written ${env:NAME}, resolved when the database is opened so the "
                                      "stored spec never holds it.")
    dir: str = Field("migrations", description="Directory of *.sql files, applied in name order; relative to the "
                                               "spec file.")
    backup_dir: str = Field("backups", description="Where the verified pre-migration backup is written; relative "
                                                   "to the spec file.")

    @field_validator("database")
    @classmethod
    def _database(cls, v: str) -> str:
        secrets.check(v)
        if v.startswith("sqlite:///") and len(v) > len("sqlite:///"):
            return v
        if v.startswith(POSTGRES_SCHEMES):
            problem = postgres_problem(secrets.for_checking(v))
            if problem:
                raise ValueError(f"{mask_password(v)}: {secrets.hide(problem, v)}; expected "
                                 "postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME")
            return v
        raise ValueError(f"expected sqlite:///PATH (relative to the spec file) or "
                         f"postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME, got {mask_password(v)!r}")
