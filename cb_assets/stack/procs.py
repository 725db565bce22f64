"""Small process helpers shared by the local services: pid files, port checks, stopping process trees."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import psutil


def port_open(host: str, port: int, timeout_s: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(host: str, port: int, timeout_s: float, proc: psutil.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before opening {host}:{port}")
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f} s")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def read_pid(pid_file: Path, expect_in_cmdline: str) -> int | None:
    """The pid recorded in `pid_file` if that process still runs and is what we started.

    A stale file (process gone, or the pid reused by an unrelated program) is removed and None returned, so a
    crash never blocks the next start and we never signal a stranger.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        return None
    try:
        proc = psutil.Process(pid)
        alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        matches = any(expect_in_cmdline in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        alive, matches = False, False
    if alive and matches:
        return pid
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()
    return None


def write_pid(pid_file: Path, pid: int) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = pid_file.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(pid_file)


def terminate_tree(
    pid: int, timeout_s: float = 10.0, sig: int = signal.SIGTERM, *, signal_children: bool = True
) -> None:
    """Signal a process (and its children), wait, then SIGKILL whatever is left: no orphans survive.

    `signal_children=False` suits servers that shut their own workers down (PostgreSQL's postmaster).
    """
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent, *parent.children(recursive=True)]
    for proc in procs if signal_children else [parent]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def default_signals_preexec() -> None:
    """Run in a child before exec: restore default SIGINT/SIGTERM handling.

    A child started from a non-interactive shell inherits SIG_IGN for SIGINT, and `dagster dev` then ignores
    SIGTERM too; resetting them lets Ctrl-C and `kill` reach it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setpgrp()


def alive_since(pid: int, since: float) -> bool:
    """Whether process `pid` runs and has run since `since` (epoch seconds), i.e. the pid was not reused by a
    process started later. A zombie (killed, not yet reaped) is not alive. Access denied means it exists."""
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= since + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
