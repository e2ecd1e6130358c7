"""Listening TCP sockets of a process tree, for the "binds loopback only" tests.

psutil is a dependency of distributed, so it is always here.
"""

from __future__ import annotations

import ipaddress
import os

import psutil


def listening(pid: int | None = None) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in process ``pid`` and its children.

    ``pid`` defaults to this process. Processes that end meanwhile are skipped.
    """
    try:
        root = psutil.Process(os.getpid() if pid is None else pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    found: set[tuple[str, int]] = set()
    for proc in tree:
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        found |= {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}
    return found


def not_loopback(sockets: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """The sockets of ``sockets`` reachable from other machines (not 127.0.0.0/8 or ::1)."""
    return {(ip, port) for ip, port in sockets if not ipaddress.ip_address(ip).is_loopback}
