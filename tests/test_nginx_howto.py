"""docs/integrations.md's private nginx, exactly as written: its commands and its nginx.conf start a real nginx,
releasegate deploys through it with the spec's router section from the same page, and users are served.

Only the directory (``/srv/rg-nginx``) and the port (``127.0.0.1:8080``) are replaced, by a temporary directory
and a free port."""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasegate import service
from tests.support.nginx import NGINX, get
from tests.support.rollouts import cleanup, free_port, write_spec
from tests.support.wait import terminate, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which(NGINX) is None, reason="nginx is not installed")]

DOC = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def howto() -> dict[str, list[str]]:
    """The how-to's code blocks by language, in order."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("### A private nginx (not the system service)", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


@pytest.fixture
def root() -> Iterator[Path]:
    """Like /srv: a directory the workers (``nobody`` when nginx starts as root) may enter."""
    path = Path(tempfile.mkdtemp(prefix="rg-nginx-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_documented_private_nginx_starts_and_serves_a_deploy(root: Path, tmp_path: Path) -> None:
    blocks = howto()
    assert sorted(blocks) == ["nginx", "sh", "yaml"] and len(blocks["sh"]) == 2
    port = free_port()

    def ours(text: str) -> str:
        return text.replace("/srv/rg-nginx", str(root)).replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    subprocess.run(ours(blocks["sh"][0]), shell=True, check=True)  # mkdir -p ...
    (root / "nginx.conf").write_text(ours(blocks["nginx"][0]), encoding="utf-8")
    start = shlex.split(ours(blocks["sh"][1]))
    assert start[0] == "nginx"
    proc = subprocess.Popen([NGINX, *start[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    spec = write_spec(tmp_path, port, "{bluegreen: {}}", post_promotion="0s", rules="[]")
    state = tmp_path / "state"
    try:
        wait_until(lambda: (root / "nginx.pid").exists() or proc.poll() is not None, what="nginx to start")
        assert proc.poll() is None, (root / "logs" / "error.log").read_text()
        builtin = f'router: {{listen: "127.0.0.1:{port}", drain_timeout: 5s}}\n'
        assert builtin in spec.read_text()
        spec.write_text(spec.read_text().replace(builtin, ours(blocks["yaml"][0])))

        ctx = service.new_context(state)
        for version in ("1.0.0", "2.0.0"):
            st = asyncio.run(asyncio.wait_for(service.deploy(ctx, spec, version), 60))
            assert st.status == "promoted", st.reason
            status, headers = get(port, "/api/items")
            assert (status, headers.get("x-version")) == (200, version)
        assert (root / "conf.d" / "releasegate-shop.conf").is_file()
        assert (root / "conf.d" / "releasegate-shop.access.log").stat().st_size > 0  # measured through it
    finally:
        asyncio.run(cleanup(state, spec))
        terminate(proc)
