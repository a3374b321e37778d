"""How many CPUs this process may use: the number of children ``worker.concurrency: 0`` runs.

``os.cpu_count()`` counts the machine's CPUs. In a container given 2 of a host's 64 (docker
``--cpus``, a Kubernetes CPU limit, systemd's ``CPUQuota=``) or pinned to some (``taskset``,
systemd's ``CPUAffinity=``), one child per CPU of the machine would share those 2 CPUs' time,
each with its own connections and memory: a container sized for 2 runs out of memory first.
So: the CPUs of the process's affinity mask, lowered to its cgroup's CPU quota (v2
``cpu.max``, v1 ``cpu.cfs_quota_us``: the lowest of its cgroup's and its parents'), rounded
up. A file that cannot be read sets no limit.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from taskd import logs

log = logs.get_logger("taskd.supervisor")

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")  # mountinfo writes a space in a path as \040

Quota = tuple[float, str]  # CPUs, and the file that sets them
Reader = Callable[[Path], "Quota | None"]  # of one cgroup directory's quota files


@dataclass(frozen=True, slots=True)
class CpuBudget:
    cpus: int  # what the process may use, at least 1
    online: int  # the machine's
    limited_by: str  # "" where it may use them all, else what limits it


def usable_cpus(proc: Path = Path("/proc")) -> CpuBudget:
    """The CPUs this process may use, from its affinity and ``proc``'s cgroup files."""
    online = os.cpu_count() or 1
    cpus, limited_by = online, ""
    pinned = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else online
    if pinned < cpus:
        cpus, limited_by = pinned, "CPU affinity"
    quota = cgroup_quota(proc / "self")
    if quota is not None and math.ceil(quota[0]) < cpus:
        cpus, limited_by = max(1, math.ceil(quota[0])), f"cgroup CPU quota ({quota[1]})"
    return CpuBudget(cpus, online, limited_by)


def cgroup_quota(process: Path) -> Quota | None:
    """The lowest CPU quota (in CPUs) of the cgroups ``process`` (a /proc/PID directory) is
    in and their parents, and the file that sets it; None where none is set."""
    try:
        memberships = (process / "cgroup").read_text().splitlines()
        mounts = (process / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    lowest: Quota | None = None
    for directory, mount, reader in _cpu_cgroups(memberships, mounts):
        for level in _up_to_mount(directory, mount):
            quota = reader(level)
            if quota is not None and (lowest is None or quota[0] < lowest[0]):
                lowest = quota
    return lowest


def _cpu_cgroups(memberships: list[str], mounts: list[str]) -> Iterator[tuple[Path, Path, Reader]]:
    """The directory of each cgroup holding the process's CPU controller, the mount point of
    its hierarchy, and the reader of that hierarchy's quota files."""
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            mount, reader = _mount(mounts, "cgroup2", ""), _v2_quota
        elif "cpu" in controllers.split(","):
            mount, reader = _mount(mounts, "cgroup", "cpu"), _v1_quota
        else:
            continue
        if mount is not None:
            root, point = mount
            # The path is from the hierarchy's root; the mount may show a subtree of it
            # (a container's own cgroup mounted as its root), or not reach the path at all.
            inside = path[len(root) :] if path.startswith(root) else "/"
            yield point / inside.lstrip("/"), point, reader


def _mount(mounts: list[str], fstype: str, controller: str) -> tuple[str, Path] | None:
    """(root within the hierarchy, mount point) of the first mount of ``fstype`` (with
    ``controller`` among its options, where one is named)."""
    for line in mounts:
        fields, _, after = line.partition(" - ")
        mount, source = fields.split(), after.split()
        if len(mount) < 5 or len(source) < 3 or source[0] != fstype:
            continue
        if not controller or controller in source[2].split(","):
            return _unescaped(mount[3]), Path(_unescaped(mount[4]))
    return None


def _unescaped(text: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), text)


def _up_to_mount(directory: Path, mount: Path) -> Iterator[Path]:
    """``directory``, then its parents up to ``mount``."""
    while True:
        yield directory
        if directory == mount or mount not in directory.parents:
            return
        directory = directory.parent


def _v2_quota(directory: Path) -> Quota | None:
    path = directory / "cpu.max"
    try:
        quota, period = path.read_text().split()[:2]
        return (int(quota) / int(period), str(path)) if quota != "max" else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> Quota | None:
    path = directory / "cpu.cfs_quota_us"
    try:
        quota = int(path.read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
        return (quota / period, str(path)) if quota > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def default_concurrency() -> int:
    """One child per CPU the process may use; said in the log where that is fewer than the
    machine has, so that an operator sees why."""
    budget = usable_cpus()
    if budget.limited_by:
        log.info(
            "cpus_limited", cpus=budget.cpus, online=budget.online, limited_by=budget.limited_by
        )
    return budget.cpus
