"""One child per CPU the daemon may use, not per CPU of the machine.

Before, ``worker.concurrency: 0`` forked ``os.cpu_count()`` children: pinned to one CPU
(``taskset -c 0``, systemd's CPUAffinity=) or in a cgroup given one CPU's time (docker
``--cpus 1``, systemd's CPUQuota=100%), taskd still forked one child per CPU of the machine.
The quota is read from fake /proc and cgroup trees here (cgroup v2 and v1, a container's
mount of its own cgroup, limits on parents), and from a real cgroup where one can be made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskd.worker.cpus import cgroup_quota, usable_cpus
from tests.support.harness import Daemon, config_data, wait_until, write_config


def fake_process(
    tmp_path: Path, memberships: str, mounts: str, files: dict[str, str]
) -> tuple[Path, Path]:
    """A /proc/PID directory and, under ``root``, the cgroup files it points at."""
    root, process = tmp_path / "fs", tmp_path / "proc" / "self"
    process.mkdir(parents=True)
    (process / "cgroup").write_text(memberships)
    (process / "mountinfo").write_text(mounts.replace("ROOT", str(root)))
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return process, root


V2_MOUNT = "30 23 0:26 / ROOT/sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_SERVICE = "0::/system.slice/taskd.service\n"


def test_a_v2_quota_of_the_process_cgroup(tmp_path: Path) -> None:
    process, root = fake_process(
        tmp_path,
        V2_SERVICE,
        V2_MOUNT,
        {
            "sys/fs/cgroup/system.slice/taskd.service/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/system.slice/cpu.max": "max 100000\n",
        },
    )
    where = root / "sys/fs/cgroup/system.slice/taskd.service/cpu.max"
    assert cgroup_quota(process) == (1.5, str(where))


def test_a_parent_lower_than_the_cgroup_sets_the_quota(tmp_path: Path) -> None:
    process, root = fake_process(
        tmp_path,
        V2_SERVICE,
        V2_MOUNT,
        {
            "sys/fs/cgroup/system.slice/taskd.service/cpu.max": "400000 100000\n",
            "sys/fs/cgroup/system.slice/cpu.max": "50000 100000\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_quota(process) == (0.5, str(root / "sys/fs/cgroup/system.slice/cpu.max"))


def test_no_quota_where_none_is_set_or_readable(tmp_path: Path) -> None:
    process, _root = fake_process(
        tmp_path,
        V2_SERVICE,
        V2_MOUNT,
        {
            "sys/fs/cgroup/system.slice/taskd.service/cpu.max": "max 100000\n",
            "sys/fs/cgroup/system.slice/cpu.max": "not a quota\n",
        },
    )
    assert cgroup_quota(process) is None
    assert cgroup_quota(tmp_path / "no-such-process") is None


def test_a_v1_container_mounting_its_own_cgroup_as_the_root(tmp_path: Path) -> None:
    """Docker on cgroup v1 without a cgroup namespace: /proc/self/cgroup names the path on
    the host, and the container's mount shows that path as its root."""
    process, root = fake_process(
        tmp_path,
        "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n",
        "40 31 0:30 /docker/abc ROOT/sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:31 /docker/abc ROOT/sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "sys/fs/cgroup/memory/cpu.cfs_quota_us": "10000\n",  # not the CPU hierarchy's
        },
    )
    where = root / "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"
    assert cgroup_quota(process) == (2.5, str(where))


def test_a_v1_quota_of_minus_one_is_none_and_a_mount_point_may_hold_a_space(
    tmp_path: Path,
) -> None:
    process, root = fake_process(
        tmp_path,
        "3:cpu:/batch/jobs\n0::/\n",
        "32 31 0:29 / ROOT/cg\\040cpu rw - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / ROOT/unified rw - cgroup2 cgroup2 rw\n",
        {
            "cg cpu/batch/jobs/cpu.cfs_quota_us": "-1\n",
            "cg cpu/batch/jobs/cpu.cfs_period_us": "100000\n",
            "cg cpu/batch/cpu.cfs_quota_us": "75000\n",
            "cg cpu/batch/cpu.cfs_period_us": "100000\n",
            "unified/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_quota(process) == (0.75, str(root / "cg cpu/batch/cpu.cfs_quota_us"))


@pytest.fixture
def two_cpus() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("this process may use one CPU only: a limit to one changes nothing")


@pytest.mark.usefixtures("two_cpus")
def test_the_quota_rounds_up_and_limits_the_cpus(tmp_path: Path) -> None:
    process, root = fake_process(
        tmp_path, V2_SERVICE, V2_MOUNT, {"sys/fs/cgroup/cpu.max": "20000 100000\n"}
    )
    budget = usable_cpus(process.parent)
    assert (budget.cpus, budget.online) == (1, os.cpu_count())
    assert budget.limited_by == f"cgroup CPU quota ({root / 'sys/fs/cgroup/cpu.max'})"


# -- the daemon ---------------------------------------------------------------------------


def started_children(process: Daemon) -> int:
    process.wait_ready(1)
    (started,) = process.events("taskd_started")
    return started["concurrency"]


@pytest.mark.usefixtures("two_cpus")
@pytest.mark.timeout(60)
def test_a_daemon_pinned_to_one_cpu_runs_one_child(
    namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    taskset = shutil.which("taskset")
    if taskset is None:
        pytest.skip("taskset (util-linux) is not installed")
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    process = daemon(config, wrapper=[taskset, "-c", "0"])
    assert started_children(process) == 1
    (limited,) = process.events("cpus_limited")
    assert (limited["cpus"], limited["limited_by"]) == (1, "CPU affinity")


def made_cgroup_of_one_cpu(name: str) -> Path | None:
    """A real cgroup given one CPU's time (v2 cpu.max where the cpu controller is on v2, else
    v1's cpu.cfs_quota_us); None where none can be made (not root, no writable cgroupfs)."""
    candidates = [
        (Path("/sys/fs/cgroup"), "cpu.max", "100000 100000"),
        (Path("/sys/fs/cgroup/unified"), "cpu.max", "100000 100000"),
        (Path("/sys/fs/cgroup/cpu"), "cpu.cfs_quota_us", "100000"),
        (Path("/sys/fs/cgroup/cpu,cpuacct"), "cpu.cfs_quota_us", "100000"),
    ]
    for mount, limit, value in candidates:
        group = mount / name
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            if not (group / "cgroup.procs").exists():  # a plain directory: no cgroupfs here
                raise FileNotFoundError(group / "cgroup.procs")
            (group / limit).write_text(value)  # none there: no cpu controller on this one
        except OSError:
            group.rmdir()
            continue
        return group
    return None


@contextlib.contextmanager
def cgroup_of_one_cpu(name: str) -> Iterator[Path]:
    group = made_cgroup_of_one_cpu(name)
    if group is None:
        pytest.skip("no cgroup with a CPU quota can be made here (needs root and cgroupfs)")
    try:
        yield group
    finally:  # once the killed daemon's processes have left it
        wait_until(lambda: not (group / "cgroup.procs").read_text().strip(), what="it empty")
        group.rmdir()


@pytest.mark.usefixtures("two_cpus")
@pytest.mark.timeout(60)
def test_a_daemon_in_a_cgroup_of_one_cpu_runs_one_child(
    namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config = write_config(tmp_path, config_data("sqlite", namespace, tmp_path))
    with cgroup_of_one_cpu(f"taskd-test-{namespace}") as group:
        enter = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)]
        process = daemon(config, wrapper=enter)
        try:
            assert started_children(process) == 1
            (limited,) = process.events("cpus_limited")
            assert limited["cpus"] == 1
            assert limited["limited_by"].startswith(f"cgroup CPU quota ({group}/")
        finally:
            process.kill()
