"""Training windows on disk, one directory per hourly partition (`<base>/<partition key>/`).

Shared by the Dagster IO manager and by the model code that trains on arbitrary ranges of hours. A partition is
replaced by writing a new directory beside it and swapping the two, so a trainer reading the old one (through
memory maps) is never handed a half-written mix.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from cb_assets.series.windows import WindowSet, load_window_set, save_window_set


class WindowStore:
    def __init__(self, base_dir: str | os.PathLike[str]) -> None:
        self.base = Path(base_dir)

    def path(self, key: str) -> Path:
        return self.base / key.replace(":", "")  # "2024-01-01-05:00" -> "2024-01-01-0500": portable names

    def save(self, key: str, ws: WindowSet) -> Path:
        final = self.path(key)
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.new")
        save_window_set(ws, tmp)
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.old")
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def exists(self, key: str) -> bool:
        return (self.path(key) / "meta.json").exists()

    def load(self, key: str, mmap: bool = True) -> WindowSet:
        if not self.exists(key):
            raise FileNotFoundError(f"no training windows stored for partition {key} under {self.base}")
        return load_window_set(self.path(key), mmap=mmap)

    def valid_count(self, key: str) -> int | None:
        """Valid windows of a stored partition (from its meta.json, without loading arrays); None if absent."""
        meta = self.path(key) / "meta.json"
        try:
            return int(json.loads(meta.read_text())["n_valid"])
        except FileNotFoundError:
            return None

    def keys(self) -> list[str]:
        """Stored partition keys, oldest first."""
        if not self.base.exists():
            return []
        names = sorted(
            p.name for p in self.base.iterdir() if not p.name.startswith(".") and (p / "meta.json").exists()
        )
        return [f"{n[:-2]}:{n[-2:]}" for n in names]

    def drop_before(self, key: str) -> list[str]:
        """Delete the stored partitions older than `key` (partition keys sort by time); returns their keys."""
        dropped = [k for k in self.keys() if k < key]
        for k in dropped:
            shutil.rmtree(self.path(k), ignore_errors=True)
        return dropped
