"""The SSH platform against real OpenSSH servers, each a "host" in its own network namespace (support/ssh_hosts.py).

What a fleet operator relies on: instances land on the hosts and answer over the network, a new controller finds
them by reading the hosts, a host that stops answering SSH is named and its instances are unknown (never dead), and
every way of not getting into a host is one line naming it, found by preflight before anything starts anywhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from releasegate import service
from releasegate.errors import HostUnreachable, ProviderError, UserError
from releasegate.providers.platforms import make_platform
from releasegate.providers.platforms.ssh_hosts import SshPlatform
from releasegate.spec import load_spec
from tests.support.rollouts import free_port
from tests.support.ssh_hosts import Fleet, fleet_of
from tests.support.wait import eventually

APP = f"{sys.executable} -m releasegate.demoapp --host 0.0.0.0 --port {{port}}"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with fleet_of(tmp_path_factory.mktemp("fleet"), 3, alt_port=1) as made:
        yield made


def write(directory: Path, fleet: Fleet, *, hosts: list[str] | None = None, extra: str = "",
          command: str = APP) -> Path:
    lines = fleet.spec_lines(command, hosts=hosts)
    path = directory / "shop.yaml"
    path.write_text(f"""\
service: shop
platform:
  kind: ssh
{lines}  stop_grace: 2s
{extra}router: {{listen: "127.0.0.1:{free_port()}"}}
health: {{path: /health, interval: 100ms, timeout: 1s, attempts: 30}}
strategy: {{bluegreen: {{}}}}
""")
    return path


def platform(path: Path, state: Path) -> SshPlatform:
    made = make_platform(load_spec(path).platform, state, path.parent)
    assert isinstance(made, SshPlatform)
    return made


async def test_instances_run_on_every_host_answer_over_the_network_and_are_found_again(tmp_path, fleet):
    spec = write(tmp_path, fleet)
    first = platform(spec, tmp_path / "state")
    try:
        started = await first.start("shop", "1.0.0", 3)
        assert sorted(i.host for i in started) == sorted(h.address for h in fleet.hosts)  # one per host
        async with httpx.AsyncClient() as client:
            for inst in started:
                assert (await client.get(f"http://{inst.address}/health")).json()["version"] == "1.0.0"
        assert await first.start("shop", "1.0.0", 3) == started  # idempotent
        again = platform(spec, tmp_path / "state")  # a restarted controller: nothing in memory
        assert [i.address for i in await again.instances("shop")] == [i.address for i in started]
        assert await again.dead_instances("shop") == []
        for inst in started:
            await again.stop(inst, 2.0)
            await again.stop(inst, 2.0)  # idempotent
        assert await again.instances("shop") == []
        assert all(fleet.app_pids(h) == [] for h in fleet.hosts)
        await again.close()
    finally:
        await _stop_all(first)


async def test_fewer_instances_than_the_fleet_go_on_the_first_hosts_and_a_second_version_beside_them(tmp_path,
                                                                                                     fleet):
    spec = write(tmp_path, fleet)
    p = platform(spec, tmp_path / "state")
    try:
        canary = await p.start("shop", "2.0.0", 1)
        assert [i.host for i in canary] == [fleet.hosts[0].address]
        blue = await p.start("shop", "1.0.0", 3)
        assert sorted(i.host for i in blue) == sorted(h.address for h in fleet.hosts)
        assert len({i.address for i in [*canary, *blue]}) == 4
    finally:
        await _stop_all(p)


async def test_an_instance_that_dies_is_reported_with_its_signal_and_log(tmp_path, fleet):
    spec = write(tmp_path, fleet)
    p = platform(spec, tmp_path / "state")
    try:
        [inst] = await p.start("shop", "1.0.0", 1)
        app = next(pid for pid in fleet.app_pids(fleet.hosts[0]) if _cmdline(pid).startswith(sys.executable))
        os.kill(app, signal.SIGKILL)  # the host's shared pid space lets the test play the OOM killer
        [dead] = await eventually(lambda: p.dead_instances("shop"), what="the death to be seen")
        assert dead.instance.id == inst.id and dead.exit_code == -signal.SIGKILL
        assert "was killed by SIGKILL" in dead.describe() and fleet.hosts[0].address in dead.describe()
        assert await p.instances("shop") == [] and not await p.alive(inst)
        await p.stop(inst, 0.0)  # forgets it
        assert await p.dead_instances("shop") == []
    finally:
        await _stop_all(p)


async def test_a_command_that_exits_at_once_fails_the_start_with_its_code_and_output_and_leaves_nothing(tmp_path,
                                                                                                       fleet):
    spec = write(tmp_path, fleet, command="echo cannot open the database on {port} >&2; exit 3")
    p = platform(spec, tmp_path / "state")
    try:
        with pytest.raises(ProviderError, match=r"instance shop 1\.0\.0 on host \S+ exited with code 3 right after "
                                                r"start: .*cannot open the database"):
            await p.start("shop", "1.0.0", 2)
        assert await p.instances("shop") == [] and await p.dead_instances("shop") == []
    finally:
        await _stop_all(p)


async def test_an_unreachable_host_is_named_and_its_instances_are_unknown_not_dead(tmp_path, fleet):
    spec = write(tmp_path, fleet)
    p = platform(spec, tmp_path / "state")
    host = fleet.hosts[1]
    try:
        started = await p.start("shop", "1.0.0", 3)
        fleet.kill_sshd(host)  # the apps keep running, as when a machine's sshd dies
        assert [i.address for i in await p.instances("shop")] == [i.address for i in started]
        assert await p.dead_instances("shop") == []
        assert p.unreachable[host.entry].startswith(f"host {host.entry} unreachable: connection refused")
        on_host = next(i for i in started if i.host == host.address)
        assert await p.alive(on_host)
        restarted = platform(spec, tmp_path / "state")  # a new controller knows the host's last-seen instances
        assert len(await restarted.instances("shop")) == 3
        [line] = await restarted.reconcile("shop")
        assert line.startswith(f"host {host.entry} unreachable") and "unknown, not dead" in line
        with pytest.raises(HostUnreachable, match=f"host {host.entry} unreachable.*nothing was started"):
            await p.start("shop", "2.0.0", 3)
        assert {i.version for i in await p.instances("shop")} == {"1.0.0"}  # not even on the hosts that answer
        with pytest.raises(HostUnreachable):
            await p.stop(on_host, 1.0)
        fleet.start_sshd(host)
        await eventually(lambda: _answered(p), what="the host to answer again")
    finally:
        fleet.start_sshd(host) if not _listening(host.address, host.port) else None
        await _stop_all(p)


async def test_a_host_that_stops_answering_is_unreachable_after_connect_timeout_and_never_dead(tmp_path, fleet):
    spec = write(tmp_path, fleet)
    spec.write_text(spec.read_text().replace("connect_timeout: 3s", "connect_timeout: 1s"))
    p = platform(spec, tmp_path / "state")
    host = fleet.hosts[2]
    try:
        started = await p.start("shop", "1.0.0", 3)
        fleet.freeze_sshd(host)
        try:
            assert [i.id for i in await p.instances("shop")] == [i.id for i in started]  # as last seen
            assert p.unreachable[host.entry] == f"host {host.entry} unreachable: no answer within 1s"
            assert await p.dead_instances("shop") == []
            assert [i.id for i in await p.instances("shop")] == [i.id for i in started]  # asked again later
        finally:
            fleet.freeze_sshd(host, frozen=False)
        await eventually(lambda: _answered(p), what="the host to answer again")
    finally:
        await _stop_all(p)


async def _answered(p: SshPlatform) -> bool:
    return len(await p.instances("shop")) == 3 and p.unreachable == {}


def _refusing(tmp_path: Path, fleet: Fleet, case: str) -> tuple[Path, str]:
    """A spec whose second host cannot be entered for ``case``; returns it and the host's entry."""
    entry = fleet.hosts[1].entry
    if case == "timeout":  # something accepts TCP there but never says a word of SSH
        listener = socket.create_server(("127.0.0.1", 0))
        _SILENT.append(listener)
        entry = f"127.0.0.1:{listener.getsockname()[1]}"
        hosts = [fleet.hosts[0].entry, entry, fleet.hosts[2].entry]
        return write(tmp_path, fleet, hosts=hosts), entry
    spec = write(tmp_path, fleet)
    text = spec.read_text()
    if case in ("mismatch", "unknown"):
        known = tmp_path / "known_hosts"
        lines = fleet.known_hosts.read_text().splitlines()
        other = tmp_path / "other_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        wrong = other.with_suffix(".pub").read_text().split()[:2]
        kept = [ln if not ln.startswith(f"[{fleet.hosts[1].address}]") else
                (f"[{fleet.hosts[1].address}]:{fleet.hosts[1].port} {' '.join(wrong)}" if case == "mismatch" else "")
                for ln in lines]
        known.write_text("\n".join(k for k in kept if k) + "\n")
        text = text.replace(str(fleet.known_hosts), str(known))
    elif case == "refused key":
        other = tmp_path / "stranger_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        for h in (fleet.hosts[0], fleet.hosts[2]):  # only the second host does not know this key
            with open(h.directory / "authorized_keys", "a") as f:
                f.write(other.with_suffix(".pub").read_text())
        text = text.replace(str(fleet.key), str(other))
    spec.write_text(text)
    return spec, entry


_SILENT: list[socket.socket] = []

CASES = {"mismatch": "host key does not match", "unknown": "unknown host, not in",
         "refused key": "refused the key", "timeout": "unreachable: no answer within"}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_way_of_not_getting_in_is_one_line_naming_the_host_and_nothing_starts(tmp_path, fleet, case):
    spec, entry = _refusing(tmp_path, fleet, case)
    text = spec.read_text().replace("connect_timeout: 3s", "connect_timeout: 1s")
    spec.write_text(text)
    p = platform(spec, tmp_path / "state")
    checks = await p.preflight("shop", "1.0.0")
    failed = [(name, detail) for name, ok, detail in checks if not ok]
    assert [name for name, _ in failed] == [f"host {entry}"], checks
    detail = failed[0][1]
    assert detail.startswith(f"host {entry}") and CASES[case] in detail and "\n" not in detail
    state = tmp_path / "state"
    with pytest.raises(UserError, match="preflight failed, nothing was started") as refused:
        await service.deploy(service.new_context(state), spec, "1.0.0")
    assert CASES[case] in str(refused.value)
    assert all(fleet.app_pids(h) == [] for h in fleet.hosts)  # nothing started on the hosts that let us in
    if case == "refused key":
        for h in (fleet.hosts[0], fleet.hosts[2]):
            lines = (h.directory / "authorized_keys").read_text().splitlines()
            (h.directory / "authorized_keys").write_text(lines[0] + "\n")
    await p.close()


async def test_run_docker_without_an_image_is_refused_by_preflight_and_start(tmp_path, fleet):
    spec = write(tmp_path, fleet, extra="  run: docker\n  port: 8000\n")
    p = platform(spec, tmp_path / "state")
    [(_, ok, detail)] = await p.preflight("shop", "1.0.0")
    assert not ok and detail.startswith("platform.run: docker needs platform.image")
    with pytest.raises(ProviderError, match=r"needs platform\.image"):
        await p.start("shop", "1.0.0", 1)


async def _stop_all(p: SshPlatform) -> None:
    for inst in await p.instances("shop"):
        await p.stop(inst, 1.0)
    for dead in await p.dead_instances("shop"):
        await p.stop(dead.instance, 0.0)
    await p.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


@pytest.fixture(autouse=True)
def _no_leftovers() -> Iterator[None]:
    yield
    while _SILENT:
        _SILENT.pop().close()
