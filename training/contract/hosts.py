"""Where a run's ranks run: the `distributed` settings as the hosts mlx.launch starts
(DESIGN.md "Process model", README "Several machines").

A run on several machines is one `mlx.launch --hostfile FILE` process; rank i runs on the
i-th host of the hostfile (mlx's JSON format: a list of `{"ssh", "ips", "rdma"}`, or
`{"backend", "envs", "hosts"}` as `mlx.distributed_config` writes it). The settings give
the hosts either as a list (`distributed.hosts`: `HOST` or `HOST=IP`) or as such a file
(`distributed.hostfile`). Everything here is pure: no network, no MLX; the console probes
the hosts themselves (console/hosts.py).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.contract.protocol import PLAIN_PROGRESS_ENV, TOKEN_ENV, WORKSPACE_ENV

BACKENDS: tuple[str, ...] = ("ring", "jaccl", "jaccl-ring", "mpi", "nccl")
DEFAULT_BACKEND = "ring"
# mlx.launch's own default first port of the ring backend.
DEFAULT_PORT = 32323
# mlx.launch runs a host written exactly so as a local process, without SSH.
LOCAL_HOST = "127.0.0.1"
# A hostfile is a few hundred bytes; anything far larger is not one.
MAX_HOSTFILE_BYTES = 1024 * 1024
MAX_HOSTS = 1024
MAX_ENV_VALUE = 4096

# An SSH destination ([user@]host, an address): never starting with "-", which ssh would
# read as an option (-oProxyCommand=... runs a command), and nothing a shell treats
# specially (mlx.launch quotes it, but a host name has no use for such characters).
_SSH_RE = re.compile(r"(?!-)[A-Za-z0-9._%@:\[\]-]{1,253}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# Variables mlx.launch or the console set for every rank: a setting may not replace them.
RESERVED_ENV: frozenset[str] = frozenset(
    {
        "MLX_RANK",
        "MLX_HOSTFILE",
        "MLX_WORLD_SIZE",
        "MLX_IBV_DEVICES",
        "MLX_JACCL_COORDINATOR",
        "MLX_JACCL_RING",
        "NCCL_HOST_IP",
        "NCCL_PORT",
        "CUDA_VISIBLE_DEVICES",
        "PYTHONPATH",
        WORKSPACE_ENV,
        TOKEN_ENV,
        PLAIN_PROGRESS_ENV,
    }
)


# What a setting may not set for the ranks besides RESERVED_ENV: the loader's, the
# shell's and Python's start-up hooks (a config must not choose code for the hosts to run).
_HOOK_PREFIXES = ("LD_", "DYLD_", "PYTHON")
_HOOK_NAMES = frozenset({"BASH_ENV", "ENV", "PATH", "SHELL", "HOME", "IFS", "PS4"})
# The Python on each host: an absolute path to an interpreter (python, python3, python3.12).
_PYTHON_RE = re.compile(r"python(\d+(\.\d+)?)?")


class HostsError(ValueError):
    """A host list, hostfile or environment that cannot be launched; the message says why."""


@dataclass(frozen=True)
class Host:
    """One rank's machine: the SSH destination, the addresses the ranks reach it on, and
    (jaccl) its RDMA devices towards each other rank, as the hostfile gives them."""

    rank: int
    ssh: str
    ips: tuple[str, ...] = ()
    rdma: tuple[Any, ...] = ()

    @property
    def local(self) -> bool:
        """mlx.launch starts this rank as a local process (no SSH)."""
        return self.ssh == LOCAL_HOST

    @property
    def name(self) -> str:
        """How messages name the host: its SSH destination, and its address when different."""
        ip = self.ips[0] if self.ips else None
        return self.ssh if ip is None or ip == self.ssh else f"{self.ssh} ({ip})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ssh": self.ssh, "ips": list(self.ips)}
        if self.rdma:
            out["rdma"] = list(self.rdma)
        return out


@dataclass(frozen=True)
class HostPlan:
    """What mlx.launch needs besides the command: hosts in rank order, the backend, the
    environment for every rank, the Python on each host and the first port."""

    hosts: tuple[Host, ...]
    backend: str = DEFAULT_BACKEND
    env: tuple[tuple[str, str], ...] = ()
    python: str | None = None
    port: int = DEFAULT_PORT
    source: str = "hosts"  # or the hostfile's path
    hostfile_envs: tuple[str, ...] = field(default=())

    @property
    def world(self) -> int:
        return len(self.hosts)

    def hostfile(self) -> dict[str, Any]:
        """The hostfile mlx.launch reads (its dict form: backend, envs, hosts)."""
        return {
            "backend": self.backend,
            "envs": list(self.hostfile_envs),
            "hosts": [h.to_json() for h in self.hosts],
        }

    def env_args(self) -> list[str]:
        """The settings' environment as NAME=VALUE, for mlx.launch's --env."""
        return [f"{k}={v}" for k, v in self.env]

    def listening(self) -> list[tuple[Host, str, int]]:
        """(host, address, port) each rank listens on, numbered as mlx.launch numbers them:
        the ring gives every address of every host the next port (one connection per
        address); jaccl's coordinator listens on rank 0's first address; nccl on its
        fixed port there; mpi needs none of ours."""
        if self.backend == "ring":
            out, port = [], self.port
            for host in self.hosts:
                for ip in host.ips:
                    out.append((host, ip, port))
                    port += 1
            return out
        if self.backend in ("jaccl", "jaccl-ring", "nccl") and self.hosts and self.hosts[0].ips:
            return [(self.hosts[0], self.hosts[0].ips[0], self.port)]
        return []

    def to_record(self) -> dict[str, Any]:
        """run.json's `launch` entry (the hosts by rank, the backend, where they came from)."""
        return {
            "launcher": "mlx.launch",
            "backend": self.backend,
            "hosts": [{"rank": h.rank, **h.to_json()} for h in self.hosts],
            "python": self.python,
            "port": self.port,
            "env": [name for name, _ in self.env],  # names only: values may be secrets
            "source": self.source,
        }


def check_ssh_destination(text: str) -> str:
    """`text` as an SSH destination ([user@]host or an address); HostsError otherwise."""
    if not isinstance(text, str) or not _SSH_RE.fullmatch(text):
        raise HostsError(
            f"{_shown(text)} is not an SSH host: give a host name or address ([user@]host), "
            "letters, digits and . _ - @ : only, not starting with '-'"
        )
    return text


def check_ip(text: str, host: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise HostsError(f"{_shown(text)} (for {host}) is not an IP address") from None


def _bare_host(ssh: str) -> str:
    return ssh.rsplit("@", 1)[-1]


def parse_host_entry(text: str, rank: int) -> Host:
    """`HOST` or `HOST=IP`: the SSH destination and the address the other ranks reach it
    on (a host given as an address is its own)."""
    entry = str(text).strip()
    ssh, sep, ip = entry.partition("=")
    ssh = check_ssh_destination(ssh.strip())
    if sep:
        return Host(rank, ssh, (check_ip(ip.strip(), ssh),))
    try:
        return Host(rank, ssh, (str(ipaddress.ip_address(_bare_host(ssh))),))
    except ValueError:
        return Host(rank, ssh, ())


def hosts_from_list(entries: Iterable[str]) -> tuple[Host, ...]:
    hosts = tuple(parse_host_entry(e, i) for i, e in enumerate(entries))
    if len(hosts) > MAX_HOSTS:
        raise HostsError(f"more than {MAX_HOSTS} hosts")
    return hosts


def parse_hostfile(
    data: Any, source: str = "the hostfile"
) -> tuple[tuple[Host, ...], str, list[str]]:
    """A hostfile's JSON (mlx's list of hosts, or {backend, envs, hosts}) as (hosts,
    backend or "", envs); HostsError naming what is wrong."""
    backend: Any = ""
    envs: Any = []
    if isinstance(data, Mapping):
        backend = data.get("backend") or ""
        envs = data.get("envs") or []
        data = data.get("hosts")
    if not isinstance(data, list) or not data:
        raise HostsError(f'{source} lists no hosts: expected a list of {{"ssh", "ips"}}')
    if len(data) > MAX_HOSTS:
        raise HostsError(f"{source} lists more than {MAX_HOSTS} hosts")
    if not isinstance(backend, str) or (backend and backend not in BACKENDS):
        raise HostsError(f"{source}: backend {_shown(backend)} is not one of {', '.join(BACKENDS)}")
    if not isinstance(envs, list) or not all(isinstance(e, str) for e in envs):
        raise HostsError(f"{source}: envs must be a list of NAME=VALUE texts")
    for entry in envs:
        check_env(*_split_env(entry, source))
    hosts = []
    for rank, item in enumerate(data):
        if not isinstance(item, Mapping) or not isinstance(item.get("ssh"), str):
            raise HostsError(f'{source}: host {rank} needs an "ssh" name')
        ssh = check_ssh_destination(item["ssh"])
        ips = item.get("ips") or []
        if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
            raise HostsError(f"{source}: host {rank} ({ssh}): ips must be a list of addresses")
        rdma = item.get("rdma") or []
        if not isinstance(rdma, list):
            raise HostsError(f"{source}: host {rank} ({ssh}): rdma must be a list")
        hosts.append(Host(rank, ssh, tuple(check_ip(ip, ssh) for ip in ips), tuple(rdma)))
    return tuple(hosts), backend, list(envs)


def read_hostfile(path: Path) -> tuple[tuple[Host, ...], str, list[str]]:
    """Read and parse a hostfile (bounded); HostsError when it cannot be used."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_HOSTFILE_BYTES + 1)
    except OSError as exc:
        raise HostsError(f"cannot read the hostfile {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_HOSTFILE_BYTES:
        raise HostsError(f"the hostfile {path} is over {MAX_HOSTFILE_BYTES // 1024} KB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise HostsError(f"the hostfile {path} is not JSON: {exc}") from None
    return parse_hostfile(data, f"the hostfile {path}")


def _split_env(entry: str, source: str) -> tuple[str, str]:
    name, sep, value = entry.partition("=")
    if not sep:
        raise HostsError(f"{source}: {_shown(entry)} is not NAME=VALUE")
    return name, value


def check_env(name: str, value: Any) -> tuple[str, str]:
    """One NAME=VALUE for every rank: a plain variable name that neither mlx.launch nor
    the console sets itself, and a value of one line."""
    if not ENV_NAME_RE.fullmatch(str(name)):
        raise HostsError(f"{_shown(name)} is not an environment variable name (letters, digits, _)")
    if name in RESERVED_ENV:
        raise HostsError(f"{name} is set by mlx.launch or the console for every rank")
    if name.startswith(_HOOK_PREFIXES) or name in _HOOK_NAMES:
        raise HostsError(
            f"{name} would change which code the hosts run: set it on the hosts themselves"
        )
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise HostsError(f"{name}: give its value as text")
    text = str(value)
    if len(text) > MAX_ENV_VALUE or any(c in text for c in "\x00\n\r"):
        raise HostsError(
            f"{name}: the value must be one line of at most {MAX_ENV_VALUE} characters"
        )
    return str(name), text


def check_python(path: str) -> str:
    """The Python every host runs: an absolute path whose name is an interpreter's."""
    if not path.startswith("/") or not _PYTHON_RE.fullmatch(path.rsplit("/", 1)[-1]):
        raise HostsError(
            f"{_shown(path)} is not a Python: give the absolute path of the Python on each "
            "host (e.g. /Users/me/mlx-cpt/.venv/bin/python)"
        )
    return path


def host_plan(
    hosts: Iterable[str] | None,
    hostfile: Path | None,
    backend: str,
    env: Mapping[str, Any] | None,
    python: str | None,
    port: int,
) -> HostPlan | None:
    """The launch plan of a run's `distributed` settings; None for a one-process run.
    HostsError when the settings cannot be launched."""
    entries = list(hosts or [])
    if entries and hostfile is not None:
        raise HostsError("give the hosts or a hostfile, not both")
    file_envs: list[str] = []
    if hostfile is not None:
        parsed, file_backend, file_envs = read_hostfile(hostfile)
        source = str(hostfile)
        backend = file_backend or backend  # the file's own backend wins, as in mlx.launch
    elif entries:
        parsed, source = hosts_from_list(entries), "hosts"
    else:
        return None
    pairs = tuple(check_env(k, v) for k, v in (env or {}).items())
    if python is not None:
        check_python(python)
    plan = HostPlan(
        parsed, backend or DEFAULT_BACKEND, pairs, python, port, source, tuple(file_envs)
    )
    problems = plan_problems(plan)
    if problems:
        raise HostsError("; ".join(problems))
    return plan


def plan_problems(plan: HostPlan) -> list[str]:
    """What keeps mlx.launch from starting this plan, as it would refuse it."""
    problems = []
    if plan.backend in ("ring", "jaccl", "jaccl-ring", "nccl"):
        missing = [h.ssh for h in plan.hosts if not h.ips]
        if plan.backend == "ring" and missing:
            problems.append(
                "the ring backend needs each host's address: write "
                + ", ".join(f"{h}=IP" for h in missing)
                + " (the address the other hosts reach it on)"
            )
        elif plan.backend != "ring" and not plan.hosts[0].ips:
            problems.append(f"{plan.backend} needs rank 0's address: write {plan.hosts[0].ssh}=IP")
    if plan.backend == "jaccl" and not all(len(h.rdma) == plan.world for h in plan.hosts):
        problems.append(
            "jaccl needs a hostfile with each host's RDMA devices (mlx.distributed_config "
            "writes one)"
        )
    listening = plan.listening()
    if listening and listening[-1][2] > 65535:
        problems.append(f"ports {plan.port}..{listening[-1][2]} go past 65535: lower the port")
    return problems


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
