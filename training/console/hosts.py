"""The hosts of a run on several machines, seen from the console: checked before each
launch, watched while the run trains.

Everything goes over SSH with `BatchMode=yes` (a host that would ask for a password or
for a new host key is not reachable: mlx.launch could not log in either), from argv
lists; the remote side gets one command line of quoted words. A host's check runs a small
program with the host's Python that reports what the launch needs (the project's code,
Python and mlx versions, the backend, the shared workspace, the model and data, free
ports); the console compares it with its own. The console itself never imports MLX: the
program is text run elsewhere.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import platform
import secrets
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from training.contract.config import ConfigError, FieldError
from training.contract.hosts import Host, HostPlan, HostsError, check_ssh_destination
from training.contract.layout import PROJECT_ROOT

log = logging.getLogger(__name__)

# Seconds a host may take to accept an SSH connection.
CONNECT_TIMEOUT = 10
# On top of that, for the check program (its Python starts and imports mlx).
CHECK_SECONDS = 60


def project_fingerprint(root: str) -> str | None:
    """A digest of the project's code (every .py file under training/ and web/, by path
    and content): equal digests mean the same version. None when there is no project."""
    import hashlib as _hashlib
    import os as _os

    digest = _hashlib.sha256()
    found = False
    for package in ("training", "web"):
        top = _os.path.join(root, package)
        for folder, dirs, files in sorted(_os.walk(top)):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = _os.path.join(folder, name)
                digest.update(_os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read() + b"\0")
                found = True
    return digest.hexdigest()[:16] if found else None


# The program a host runs (with the host's Python): one JSON line of facts. The
# fingerprint is this module's own function, so both sides compute it the same way.
PROBE = (
    inspect.getsource(project_fingerprint)
    + """
import hashlib, json, os, platform, socket, sys
from importlib import metadata

args = json.loads(sys.argv[1])
out = {
    "python": platform.python_version(),
    "hostname": socket.gethostname(),
    "platform": platform.platform(terse=True),
    "project": project_fingerprint(args["project"]),
    "missing": [p for p in args["paths"] if not os.path.exists(p)],
}
try:
    out["mlx_lm"] = metadata.version("mlx-lm")
except Exception:
    out["mlx_lm"] = None
try:
    import mlx.core as mx
    out["mlx"] = mx.__version__
    out["backend"] = bool(mx.distributed.is_available(args["backend"]))
except Exception as exc:
    out["mlx_error"] = f"{type(exc).__name__}: {exc}"
check = args.get("check")
if check:
    try:
        with open(check[0], "rb") as f:
            out["shared"] = hashlib.sha256(f.read()).hexdigest() == check[1]
    except OSError:
        out["shared"] = False
busy = []
for ip, port in args["ports"]:
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, port))
    except OSError as exc:
        busy.append([ip, port, exc.strerror or str(exc)])
    finally:
        s.close()
out["busy"] = busy
print(json.dumps(out))
"""
)


def ssh_argv(
    ssh: str, command: str, connect_timeout: int = CONNECT_TIMEOUT, client: str = "ssh"
) -> list[str]:
    """`client` (ssh) to a checked destination without ever asking anything (BatchMode)."""
    return [
        client,
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", f"ServerAliveInterval={connect_timeout}",
        "-o", "ServerAliveCountMax=1",
        "-o", "LogLevel=ERROR",
        "--", check_ssh_destination(ssh), command,
    ]  # fmt: skip


def run_on(
    host: Host,
    argv: list[str],
    *,
    connect_timeout: int = CONNECT_TIMEOUT,
    seconds: float,
    client: str = "ssh",
) -> subprocess.CompletedProcess[str]:
    """Run `argv` on a host: over SSH (its words quoted for the remote shell), or here
    for a local host. TimeoutExpired when it takes longer than `seconds`."""
    if not host.local:
        argv = ssh_argv(host.ssh, shlex.join(argv), connect_timeout, client)
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=seconds,
        check=False,
        errors="replace",
    )


@dataclass
class HostReport:
    """One host's check: its problems (none: ready) and what it said about itself."""

    rank: int
    host: str
    ssh: str
    problems: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "host": self.host,
            "ssh": self.ssh,
            "ok": self.ok,
            "problems": self.problems,
            "facts": self.facts,
        }


class HostCheckFailed(ConfigError):
    """Hosts a launch cannot use: one error per problem, each naming its host."""

    def __init__(self, reports: list[HostReport], field_name: str) -> None:
        self.reports = reports
        super().__init__(
            [
                FieldError(field_name, f"{r.host} (rank {r.rank}): {problem}")
                for r in reports
                for problem in r.problems
            ]
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@dataclass(frozen=True)
class Expected:
    """What every host must match: this console's project, Python and mlx."""

    project: str | None
    python: str
    mlx: str | None
    mlx_lm: str | None

    @classmethod
    def here(cls) -> Expected:
        return cls(
            project_fingerprint(str(PROJECT_ROOT)),
            platform.python_version(),
            _installed("mlx"),
            _installed("mlx-lm"),
        )


def _installed(name: str) -> str | None:
    """A package's installed version, from its metadata (nothing is imported)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_host(
    host: Host,
    plan: HostPlan,
    *,
    python: str,
    paths: list[str],
    check: tuple[str, str] | None,
    expected: Expected,
    connect_timeout: int = CONNECT_TIMEOUT,
    client: str = "ssh",
) -> HostReport:
    report = HostReport(host.rank, host.name, host.ssh)
    ports = [[ip, port] for h, ip, port in plan.listening() if h.rank == host.rank]
    backend = "jaccl" if plan.backend == "jaccl-ring" else plan.backend
    args = {
        "project": str(PROJECT_ROOT),
        "paths": paths,
        "backend": backend,
        "check": list(check) if check else None,
        "ports": ports,
    }
    argv = [plan.python or python, "-c", PROBE, json.dumps(args)]
    seconds = connect_timeout + CHECK_SECONDS
    try:
        result = run_on(host, argv, connect_timeout=connect_timeout, seconds=seconds, client=client)
    except subprocess.TimeoutExpired:
        report.problems.append(f"did not answer within {seconds} s")
        return report
    except OSError as exc:  # no ssh client here
        report.problems.append(f"cannot run ssh: {exc}")
        return report
    said = _last_line(result.stderr)
    if result.returncode == 255 and not host.local:
        report.problems.append(
            f"not reachable over SSH without a password ({said or 'ssh failed'}): set up "
            "key login and accept its host key first (ssh to it once by hand)"
        )
        return report
    try:
        facts = json.loads(result.stdout.strip().splitlines()[-1])
        if not isinstance(facts, dict):
            raise ValueError("not an object")
    except (ValueError, IndexError):
        if result.returncode in (126, 127) or "No such file" in said:
            report.problems.append(f"no Python at {plan.python or python} there")
        else:
            report.problems.append(f"the check could not run there: {said or result.returncode}")
        return report
    report.facts = {k: facts.get(k) for k in ("hostname", "python", "mlx", "mlx_lm", "platform")}
    report.problems += _compare(facts, plan, expected, check)
    return report


def _compare(
    facts: dict[str, Any], plan: HostPlan, expected: Expected, check: tuple[str, str] | None
) -> list[str]:
    problems = []
    if facts.get("project") is None:
        problems.append(f"this project is not at {PROJECT_ROOT} there")
    elif facts["project"] != expected.project:
        problems.append(
            f"another version of this project is at {PROJECT_ROOT} there (its code differs "
            "from the console's): use the same version on every host"
        )
    if facts.get("python") != expected.python:
        problems.append(
            f"Python {facts.get('python')} there, {expected.python} here: use the same "
            "Python on every host"
        )
    if facts.get("mlx_error"):
        problems.append(f"mlx cannot be imported there ({facts['mlx_error']})")
    else:
        for name, want in (("mlx", expected.mlx), ("mlx_lm", expected.mlx_lm)):
            if want is not None and facts.get(name) != want:
                problems.append(
                    f"{name.replace('_', '-')} {facts.get(name)} there, {want} here: use the "
                    "same version on every host"
                )
        if facts.get("backend") is False:
            problems.append(f"mlx's {plan.backend} backend is not available there")
    for path in facts.get("missing") or []:
        problems.append(
            f"{path} is missing there: every host needs the workspace, the model and the "
            "data at the same paths (a shared folder)"
        )
    if check is not None and facts.get("shared") is False and not facts.get("missing"):
        problems.append(
            "its workspace is not this console's (a file just written here is not there): "
            "mount the same shared folder at the same path on every host"
        )
    for ip, port, why in facts.get("busy") or []:
        problems.append(f"port {port} on {ip} is not free there ({why}): choose another port")
    return problems


def check_hosts(
    plan: HostPlan,
    *,
    python: str,
    workspace: Path,
    paths: Iterable[Path],
    connect_timeout: int = CONNECT_TIMEOUT,
    client: str = "ssh",
) -> list[HostReport]:
    """Check every host of a launch at once; one report per host, in rank order. A file
    written into the workspace just for this proves each host sees the same workspace."""
    probe_dir = workspace / "launch"
    probe_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    marker = probe_dir / f".check-{secrets.token_hex(6)}"
    marker.write_text(token)
    try:
        check = (str(marker), hashlib.sha256(token.encode()).hexdigest())
        wanted = [str(workspace), *(str(p) for p in paths)]
        expected = Expected.here()
        with ThreadPoolExecutor(max_workers=min(16, plan.world)) as pool:
            return list(
                pool.map(
                    lambda host: check_host(
                        host,
                        plan,
                        python=python,
                        paths=wanted,
                        check=check,
                        expected=expected,
                        connect_timeout=connect_timeout,
                        client=client,
                    ),
                    plan.hosts,
                )
            )
    finally:
        marker.unlink(missing_ok=True)


# -- while a run trains --------------------------------------------------------------------


def watch_interval(stop_grace: float) -> float:
    """Seconds between two looks at the hosts: two failed looks in a row, each waiting at
    most as long for an answer, end the run well within the stop grace period."""
    return max(0.5, min(10.0, stop_grace / 8))


class HostWatch:
    """While a launch runs, ssh to each remote host every `interval` seconds; after two
    failures in a row call `lost(rank, host, why)` once and stop. mlx.launch itself
    notices a host that dies outright (its SSH session ends); one that drops off the
    network leaves every rank waiting in a collective, and only this notices it."""

    def __init__(
        self,
        run_id: str,
        hosts: list[dict[str, Any]],
        interval: float,
        lost: Callable[[int, str, str], None],
        client: str = "ssh",
    ) -> None:
        self.run_id = run_id
        self.client = client
        self.interval = interval
        self.connect_timeout = max(1, math.ceil(interval))
        self._lost = lost
        self._stop = threading.Event()
        self.hosts: list[Host] = []
        for item in hosts:
            try:  # run.json is data: a destination is checked again before ssh sees it
                host = Host(int(item["rank"]), check_ssh_destination(str(item["ssh"])))
            except (KeyError, TypeError, ValueError, HostsError):
                log.warning("run %s: not watching a host run.json names badly: %r", run_id, item)
                continue
            if not host.local:
                self.hosts.append(Host(host.rank, host.ssh, tuple(item.get("ips") or ())))

    def start(self) -> HostWatch:
        if self.hosts:
            threading.Thread(target=self._run, name=f"hosts-{self.run_id}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _look(self, host: Host) -> str | None:
        """Why the host does not answer, or None when it does."""
        seconds = 2 * self.connect_timeout + 5
        try:
            result = run_on(
                host,
                ["true"],
                connect_timeout=self.connect_timeout,
                seconds=seconds,
                client=self.client,
            )
        except subprocess.TimeoutExpired:
            return f"no answer over SSH within {seconds} s"
        except OSError as exc:
            return f"ssh could not run: {exc}"
        if result.returncode == 255:  # ssh's own failure: no connection (any other code
            # is the remote shell's: the host answered)
            return _last_line(result.stderr) or "ssh could not connect"
        return None

    def _run(self) -> None:
        failures = {h.rank: 0 for h in self.hosts}
        with ThreadPoolExecutor(max_workers=min(16, len(self.hosts))) as pool:
            while not self._stop.wait(self.interval):
                for host, why in zip(self.hosts, pool.map(self._look, self.hosts), strict=True):
                    if why is None:
                        failures[host.rank] = 0
                        continue
                    failures[host.rank] += 1
                    log.info("run %s: host %s does not answer: %s", self.run_id, host.name, why)
                    if failures[host.rank] >= 2 and not self._stop.is_set():
                        self._stop.set()
                        self._lost(host.rank, host.name, why)
                        return
