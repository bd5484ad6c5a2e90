"""Finding a service in a state dir: its last spec, and what to say when the state dir does not know it.

Shared by the use cases, `down` and the router commands; no provider is started here.
"""

from __future__ import annotations

from pathlib import Path

from releasegate.errors import UserError
from releasegate.spec.models import Spec
from releasegate.store.sqlite import RolloutRecord, Store


def spec_of(rec: RolloutRecord) -> Spec:
    return Spec.model_validate_json(rec.spec_json)


def shown(state_dir: Path) -> str:
    """A state dir as the user gave it, with where that is when it was relative (the working directory counts)."""
    return str(state_dir) if state_dir.is_absolute() else f"{state_dir} ({state_dir.resolve()})"


POINT_ELSEWHERE = "to read another state dir: --state-dir DIR or RELEASEGATE_HOME=DIR"


def unknown_service(state_dir: Path, service: str, then: str) -> UserError:
    """A service this state dir does not know: say which state dir was read (it may not exist: a directory where
    releasegate never ran) and how to point at the one where the service was deployed."""
    from releasegate.store import pg
    from releasegate.store.db import has_store, store_url

    url = store_url()
    if url is not None:
        where = f"the store {pg.redact(url)} has no service {service!r}"
        return UserError(f"{service}: unknown service: {where}; {then}; to read another store: --store URL or "
                         "RELEASEGATE_STORE=URL")
    if has_store(state_dir):
        where = f"the state dir {shown(state_dir)} has no service {service!r}"
    else:
        where = f"there is no releasegate state in {shown(state_dir)}"
    return UserError(f"{service}: unknown service: {where}; {then}; {POINT_ELSEWHERE}")


def known(store: Store, service: str) -> bool:
    return store.service(service) is not None or store.latest_rollout(service) is not None


def last_spec(store: Store, service: str) -> tuple[Spec, Path] | None:
    """The spec the service last ran with (stored with its last rollout), and the directory its relative paths
    start from; None for a service this state has never seen."""
    latest = store.latest_rollout(service)
    if latest is not None:
        return spec_of(latest), Path(latest.spec_path).parent
    rec = store.service(service)
    if rec is not None and rec.spec_json:
        return Spec.model_validate_json(rec.spec_json), Path(rec.spec_path).parent if rec.spec_path else Path.cwd()
    return None
