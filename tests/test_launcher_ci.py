""".ci/start_slurm.sh stops only what it started: a second one-node cluster (own config, ports, state and pid files)
is brought up beside the one the tests use, runs a job, is restarted and stopped, and the first cluster's daemons
and munged live on throughout."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / ".ci" / "start_slurm.sh"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    return pid is not None and Path(f"/proc/{pid}").exists()


@pytest.mark.slurm
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("slurmctld") is None, reason="needs root and slurmctld")
def test_start_slurm_stops_only_the_daemons_it_started(tmp_path):
    # the daemons of the cluster the other tests use (started by someone else, as far as this run is concerned)
    others = {name: _pid(f) for name, f in (("slurmctld", "/run/slurmctld.pid"), ("slurmd", "/run/slurmd.pid"),
                                            ("munged", "/run/munge/munged.pid"))}
    others = {k: v for k, v in others.items() if _alive(v)}
    assert others, "no running SLURM daemons to leave alone"
    env = {**os.environ, "SLURM_CONF": str(tmp_path / "etc" / "slurm.conf"), "ECOMVLM_SLURM_STATE": str(tmp_path),
           "ECOMVLM_SLURM_PORTS": " ".join(map(str, _free_ports(2))), "ECOMVLM_SLURM_CLUSTER": "ecomvlm-ci-test"}
    started = tmp_path / "run" / "ecomvlm-slurm-started"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)

    try:
        p = run()
        assert p.returncode == 0, p.stdout + p.stderr
        assert "local SLURM is up" in p.stdout and "munged is already running: using it" in p.stdout
        assert not (started / "munged.pid").exists()  # not ours: never recorded, never stopped
        mine = {d: _pid(started / f"{d}.pid") for d in ("slurmctld", "slurmd")}
        assert all(_alive(pid) for pid in mine.values()) and not set(mine.values()) & set(others.values())
        job = subprocess.run(["srun", "-n", "1", "-t", "1", "hostname"], env=env, capture_output=True, text=True,
                             timeout=60)
        assert job.returncode == 0 and job.stdout.strip(), job.stderr
        assert "ecomvlm-ci-test" in subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True,
                                                   text=True).stdout
        p = run()  # a re-run restarts its own daemons only
        assert p.returncode == 0, p.stdout + p.stderr
        assert "stopped slurmctld" in p.stdout and "stopped slurmd" in p.stdout
        again = {d: _pid(started / f"{d}.pid") for d in ("slurmctld", "slurmd")}
        assert not any(_alive(pid) for pid in mine.values()) and all(_alive(pid) for pid in again.values())
        p = run("stop")
        assert p.returncode == 0, p.stdout + p.stderr
        assert not any(_alive(pid) for pid in again.values()) and not list(started.glob("*.pid"))
    finally:
        run("stop")
    assert all(_alive(pid) for pid in others.values())  # the other cluster and munged were never touched
    assert subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0
