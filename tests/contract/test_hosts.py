"""The `distributed` settings as mlx.launch's hosts: host lists, hostfiles in mlx's JSON
format, the environment for every rank and the ports each rank listens on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.contract.config import ConfigError, build_config, distributed_plan
from training.contract.hosts import HostsError, host_plan, parse_host_entry, read_hostfile

BASE = {"model": "m", "data": "d.txt", "batch_size": 4}


def errors_of(**values: object) -> dict[str | None, str]:
    with pytest.raises(ConfigError) as info:
        build_config({**BASE, **values})
    return {e.field: e.message for e in info.value.errors}


def test_hosts_become_the_hostfile_mlx_launch_reads() -> None:
    config, _ = build_config(
        {**BASE, "distributed": {"hosts": "10.0.0.11, mac2.local=10.0.0.12", "port": 40000}}
    )
    plan = distributed_plan(config, Path("/"))
    assert plan is not None and plan.world == 2 and plan.backend == "ring"
    assert plan.hostfile() == {
        "backend": "ring",
        "envs": [],
        "hosts": [
            {"ssh": "10.0.0.11", "ips": ["10.0.0.11"]},
            {"ssh": "mac2.local", "ips": ["10.0.0.12"]},
        ],
    }
    # mlx.launch's numbering: the next port for every address of every host, in rank order.
    assert [(h.rank, ip, port) for h, ip, port in plan.listening()] == [
        (0, "10.0.0.11", 40000),
        (1, "10.0.0.12", 40001),
    ]
    assert plan.hosts[1].name == "mac2.local (10.0.0.12)" and plan.hosts[0].name == "10.0.0.11"


def test_no_hosts_is_one_process_here() -> None:
    config, _ = build_config(BASE)
    assert distributed_plan(config, Path("/")) is None


@pytest.mark.parametrize(
    ("values", "field", "says"),
    [
        ({"distributed": {"hosts": ["mac1.local", "mac2.local"]}}, "distributed.hosts", "=IP"),
        ({"distributed": {"hosts": ["-oProxyCommand=touch /tmp/x"]}}, "distributed.hosts", "'-'"),
        ({"distributed": {"hosts": ["a b"]}}, "distributed.hosts", "not an SSH host"),
        ({"distributed": {"hosts": ["h=999.1.1.1"]}}, "distributed.hosts", "not an IP"),
        ({"distributed": {"hosts": ["10.0.0.1", "10.0.0.2", "10.0.0.3"]}}, "batch_size", "3"),
        ({"distributed": {"env": {"MLX_RANK": "3"}}}, "distributed.env", "set by mlx.launch"),
        ({"distributed": {"env": {"A-B": "1"}}}, "distributed.env", "not an environment"),
        ({"distributed": {"env": {"A": "1\nexport B=2"}}}, "distributed.env", "one line"),
        ({"distributed": {"python": "venv/bin/python"}}, "distributed.python", "not a Python"),
        ({"distributed": {"python": "/bin/sh"}}, "distributed.python", "not a Python"),
        ({"distributed": {"env": {"LD_PRELOAD": "x.so"}}}, "distributed.env", "which code"),
        ({"distributed": {"backend": "tcp"}}, "distributed.backend", "one of"),
        ({"distributed": {"port": 80}}, "distributed.port", "at least 1024"),
        (
            {"distributed": {"hosts": ["10.0.0.1"], "hostfile": "h.json"}},
            "distributed.hostfile",
            "not both",
        ),
    ],
)
def test_settings_mlx_launch_cannot_run_are_refused(
    values: dict[str, object], field: str, says: str
) -> None:
    assert says in errors_of(**values)[field]


def test_a_hostfile_in_mlx_format_with_its_backend_and_envs(tmp_path: Path) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(
        json.dumps(
            {
                "backend": "jaccl",
                "envs": ["MLX_METAL_FAST_SYNCH=1"],
                "hosts": [
                    {"ssh": "m1", "ips": ["192.168.0.1"], "rdma": [None, "rdma_en3"]},
                    {"ssh": "m2", "ips": ["192.168.0.2"], "rdma": ["rdma_en3", None]},
                ],
            }
        )
    )
    config, _ = build_config(
        {**BASE, "distributed": {"hostfile": str(hostfile)}}, check_paths=False
    )
    plan = distributed_plan(config, tmp_path)
    assert plan is not None and plan.backend == "jaccl" and plan.world == 2
    assert plan.hostfile()["envs"] == ["MLX_METAL_FAST_SYNCH=1"]
    assert plan.hostfile()["hosts"][1]["rdma"] == ["rdma_en3", None]
    # A file that names no backend takes the setting's.
    hostfile.write_text(json.dumps(plan.hostfile()["hosts"]))
    config = config.replace(distributed_backend="mpi")
    assert distributed_plan(config, tmp_path).backend == "mpi"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("[]", "lists no hosts"),
        ("{not json", "not JSON"),
        ('[{"ips": ["1.2.3.4"]}]', 'needs an "ssh"'),
        ('[{"ssh": "h", "ips": "1.2.3.4"}]', "ips must be a list"),
        ('{"hosts": [{"ssh": "h"}], "envs": ["NOVALUE"]}', "NAME=VALUE"),
        ('{"hosts": [{"ssh": "h"}], "backend": "carrier-pigeon"}', "backend"),
    ],
)
def test_a_broken_hostfile_says_what_is_wrong(tmp_path: Path, content: str, says: str) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(content)
    with pytest.raises(HostsError, match=says):
        read_hostfile(hostfile)
    with pytest.raises(ConfigError) as info:
        build_config(
            {**BASE, "distributed": {"hostfile": str(hostfile)}},
            check_paths=True,
            base_dir=tmp_path,
        )
    assert says in {e.field: e.message for e in info.value.errors}["distributed.hostfile"]


def test_an_ssh_destination_may_carry_a_user_and_an_address_is_its_own_ip() -> None:
    host = parse_host_entry("me@10.1.2.3", 0)
    assert host.ssh == "me@10.1.2.3" and host.ips == ("10.1.2.3",)
    assert parse_host_entry("127.0.0.1", 1).local


def test_ports_past_the_last_one_are_refused() -> None:
    with pytest.raises(HostsError, match="65535"):
        host_plan(["10.0.0.1", "10.0.0.2"], None, "ring", None, None, 65535)
