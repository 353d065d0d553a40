"""Stand-in hosts for the multi-host tests: Linux network namespaces on a bridge, each with
its own address and its own sshd (Debian's openssh-server), reachable over SSH with a key
the test makes (/work/shared/MULTIHOST.md is the recipe).

    with stand_in_hosts(tmp_path, 2) as hosts:
        hosts.addresses                # ["10.x.y.11", "10.x.y.12"]
        hosts.kill(1)                  # every process of the second host dies at once
        hosts.unplug(1)                # its link goes down: it drops off the network

The namespaces share this machine's file system and process table, so every "host" has
the project, the venv and the workspace at the same paths (the shared folder real machines
need). Everything made here is removed on the way out, on failure too: sshd processes,
namespaces, the bridge (the veth pairs go with them), the keys and known_hosts, and the
SSH client's configuration for these addresses, a drop-in file of /etc/ssh/ssh_config.d
(the only place `ssh`, as mlx.launch runs it, can learn a key and a host key without a
person's home folder being touched). Only these addresses and loopback are contacted.

Needs root on Linux with iproute2 and openssh (scripts/setup.sh installs them). Without
them the tests fail under CI (env CI set) and are expected failures elsewhere: never skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import psutil
import pytest

from tests.conftest import IN_CI
from tests.helpers import wait_until
from tests.trainer_helpers import TINY

SSHD = Path("/usr/sbin/sshd")
SSH_CONFIG_D = Path("/etc/ssh/ssh_config.d")
# sshd's privilege separation folder (compiled in on Debian); made when missing, and
# removed again by the last test that needed it (HOLDERS counts them, across processes).
PRIVSEP = Path("/run/sshd")
HOLDERS = Path("/run/mlx-cpt-test-sshd")


def unavailable(reason: str) -> None:
    message = f"the multi-host tests need root, iproute2 and openssh-server: {reason}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.xfail(message)


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def _requirements() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not SSHD.is_file():
        return f"{SSHD} is not installed (Debian: openssh-server)"
    if not SSH_CONFIG_D.is_dir():
        return f"{SSH_CONFIG_D} is missing (the ssh client's drop-in configuration)"
    return None


@contextlib.contextmanager
def _privsep_lock() -> Iterator[None]:
    fd = os.open("/run", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _hold_privsep(tag: str) -> None:
    with _privsep_lock():
        HOLDERS.mkdir(exist_ok=True)
        if not PRIVSEP.exists():
            PRIVSEP.mkdir(mode=0o755)
            (HOLDERS / ".created").touch()
        (HOLDERS / tag).touch()


def _release_privsep(tag: str) -> None:
    with _privsep_lock():
        (HOLDERS / tag).unlink(missing_ok=True)
        if HOLDERS.is_dir() and not any(p.name != ".created" for p in HOLDERS.iterdir()):
            if (HOLDERS / ".created").exists():
                with contextlib.suppress(OSError):
                    PRIVSEP.rmdir()
            shutil.rmtree(HOLDERS, ignore_errors=True)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200-249.x that no interface or route of this machine uses."""
    used = _run("ip", "-o", "-4", "addr", "show") + _run("ip", "-4", "route", "show")
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24")
        if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
            return net
    raise RuntimeError("no free 10.x.y.0/24 for the stand-in hosts")


@dataclass
class StandIn:
    namespace: str
    address: str
    veth: str  # this machine's end of the host's cable
    config: Path
    log: Path
    sshd: subprocess.Popen[bytes] | None = None


@dataclass
class StandInHosts:
    tag: str
    keys: Path
    bridge: str
    gateway: str
    hosts: list[StandIn] = field(default_factory=list)
    ssh_config: Path | None = None

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.hosts]

    def pids(self, i: int) -> list[int]:
        """Every process that runs inside host i's namespace."""
        out = subprocess.run(
            ["ip", "netns", "pids", self.hosts[i].namespace], capture_output=True, text=True
        )
        return [int(p) for p in out.stdout.split()]

    def kill(self, i: int) -> None:
        """Host i dies: every process in it (its sshd, its sessions, its rank) at once."""
        for pid in self.pids(i):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def unplug(self, i: int) -> None:
        """Host i drops off the network (its processes live on, unreachable)."""
        _run("ip", "link", "set", self.hosts[i].veth, "down")

    def sshd_log(self) -> str:
        return "\n".join(
            f"--- {h.namespace} sshd ---\n{h.log.read_text(errors='replace')}"
            for h in self.hosts
            if h.log.exists()
        )


def _sshd_config(host: StandIn, keys: Path) -> str:
    return "\n".join(
        [
            f"ListenAddress {host.address}",
            f"HostKey {keys / 'host_key'}",
            f"PidFile {keys / (host.namespace + '.pid')}",
            f"AuthorizedKeysFile {keys / 'authorized_keys'}",
            "StrictModes no",  # the keys live under /tmp
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "PrintMotd no",
            "UseDNS no",
            "",
        ]
    )


def _listening(address: str) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, 22), timeout=1):
        return True
    return False


@contextlib.contextmanager
def stand_in_hosts(n: int = 2) -> Iterator[StandInHosts]:
    """n stand-in hosts, torn down whatever happens (see the module's docstring)."""
    problem = _requirements()
    if problem:
        unavailable(problem)
    tag = secrets.token_hex(2)
    keys = Path(tempfile.mkdtemp(prefix=f"mlx-cpt-hosts-{tag}-"))
    subnet = str(_free_subnet().network_address)  # 10.x.y.0
    setup = StandInHosts(tag, keys, f"mcb{tag}", subnet[: -len("0")] + "1")
    held = bridged = False
    try:
        try:
            _hold_privsep(tag)
            held = True
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "id"))
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host_key"))
            shutil.copy(keys / "id.pub", keys / "authorized_keys")
            _run("ip", "link", "add", setup.bridge, "type", "bridge")
            bridged = True
            _run("ip", "addr", "add", f"{setup.gateway}/24", "dev", setup.bridge)
            _run("ip", "link", "set", setup.bridge, "up")
            _add_hosts(setup, n)
        except (OSError, RuntimeError) as exc:
            unavailable(str(exc))
        yield setup
    finally:
        _teardown(setup, held, bridged)


def _add_hosts(setup: StandInHosts, n: int) -> None:
    keys, tag = setup.keys, setup.tag
    base = setup.gateway[: -len("1")]
    host_key = (keys / "host_key.pub").read_text().split()[:2]
    known = []
    for i in range(n):
        host = StandIn(
            namespace=f"mlxcpt-{tag}-{i + 1}",
            address=f"{base}{11 + i}",
            veth=f"mcv{tag}{i + 1}",
            config=keys / f"sshd-{i + 1}.conf",
            log=keys / f"sshd-{i + 1}.log",
        )
        peer = f"mcp{tag}{i + 1}"
        _run("ip", "netns", "add", host.namespace)
        setup.hosts.append(host)
        _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", host.namespace)
        _run("ip", "link", "set", host.veth, "master", setup.bridge)
        _run("ip", "link", "set", host.veth, "up")
        inside = ("ip", "netns", "exec", host.namespace)
        _run(*inside, "ip", "addr", "add", f"{host.address}/24", "dev", peer)
        _run(*inside, "ip", "link", "set", peer, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        host.config.write_text(_sshd_config(host, keys))
        with host.log.open("wb") as log:
            # `ip netns exec` becomes sshd (-D: in the foreground, our child).
            host.sshd = subprocess.Popen(
                [*inside, str(SSHD), "-D", "-e", "-f", str(host.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        known.append(f"{host.address} {' '.join(host_key)}")
    (keys / "known_hosts").write_text("\n".join(known) + "\n")
    config = SSH_CONFIG_D / f"mlx-cpt-test-{tag}.conf"
    config.write_text(
        f"# the stand-in hosts of one test run (tests/multihost.py); removed after it\n"
        f"Host {' '.join(setup.addresses)}\n"
        f"  IdentityFile {keys / 'id'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {keys / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  PasswordAuthentication no\n"
    )
    setup.ssh_config = config
    for host in setup.hosts:
        wait_until(partial(_listening, host.address), timeout=20, message=f"sshd on {host.address}")


def _emptied(setup: StandInHosts, i: int) -> bool:
    return not setup.pids(i)


def _teardown(setup: StandInHosts, held: bool, bridged: bool) -> None:
    if setup.ssh_config is not None:
        setup.ssh_config.unlink(missing_ok=True)
    for i, host in enumerate(setup.hosts):
        if host.sshd is not None and host.sshd.poll() is None:
            host.sshd.kill()
        if host.sshd is not None:
            host.sshd.wait()
        setup.kill(i)  # ranks or sessions still in it
        wait_until(partial(_emptied, setup, i), timeout=20, message="the host's processes")
        subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
    if bridged:
        subprocess.run(["ip", "link", "del", setup.bridge], capture_output=True)
    shutil.rmtree(setup.keys, ignore_errors=True)
    if held:
        _release_privsep(setup.tag)


def end_processes_naming(text: str) -> None:
    """SIGKILL what is left of a test's launches here (mlx.launch and its ssh clients
    name the run folder on their command lines)."""
    me = os.getpid()
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != me and any(text in arg for arg in proc.info["cmdline"] or []):
                proc.kill()


def run_config(
    assets: dict[str, Path], addresses: list[str], **values: object
) -> dict[str, object]:
    """A tiny real run on these hosts, with a port range of its own (the namespaces are
    new, but a rerun must not wait on a closing socket)."""
    return {
        "model": str(assets["model"]),
        "data": str(assets["corpus"]),
        **TINY,
        **values,
        "distributed": {"hosts": addresses, "port": random.randint(20_000, 60_000)},
    }
