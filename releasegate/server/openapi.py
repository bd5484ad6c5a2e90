"""Print the server's OpenAPI document: ``python -m releasegate.server.openapi > docs/openapi.json``.

tests/test_server_api.py compares docs/openapi.json with this output, so the checked-in document is the API.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def document() -> dict[str, Any]:
    from releasegate.server.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        return create_app(Path(tmp), adopt=False).openapi()


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(render(), end="")
