"""The built-in router: releasegate's own data plane, a separate long-running process per service.

``run_router(RouterConfig(...))`` runs it in the foreground (the ``releasegate router`` command);
``python -m releasegate.router`` is how the controller starts it detached.
"""

from releasegate.router.config import RouterConfig
from releasegate.router.server import run_router

__all__ = ["RouterConfig", "run_router"]
