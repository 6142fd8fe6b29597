"""What the bridge has published, kept across restarts: per chain, the last blocks it published
(enough of them to find where a reorg forks), and per LND the invoice indexes to resume from.

The file is small JSON, replaced atomically (written beside, fsynced, renamed, directory
fsynced), so a crash leaves either the old or the new state, never half of one. It is written
only after Kafka acknowledged what it records: at least once, never a gap.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcm_tools.errors import UsageError

# How many of the last published blocks are remembered per chain: the deepest reorg the bridge
# can unwind by itself. Deeper ones are reported and the bridge resumes on the new chain.
KEEP_BLOCKS = 144


@dataclass
class ChainTip:
    """The published branch's newest blocks, oldest first: (height, hash)."""

    blocks: list[tuple[int, str]] = field(default_factory=list)

    @property
    def height(self) -> int | None:
        return self.blocks[-1][0] if self.blocks else None

    @property
    def hash(self) -> str | None:
        return self.blocks[-1][1] if self.blocks else None

    def hash_at(self, height: int) -> str | None:
        if not self.blocks or height < self.blocks[0][0] or height > self.blocks[-1][0]:
            return None
        return self.blocks[height - self.blocks[0][0]][1]

    def knows(self, block_hash: str) -> bool:
        return any(h == block_hash for _, h in self.blocks)

    def push(self, height: int, block_hash: str) -> None:
        if self.blocks and height != self.blocks[-1][0] + 1:
            self.blocks = []
        self.blocks.append((height, block_hash))
        del self.blocks[:-KEEP_BLOCKS]

    def pop(self) -> tuple[int, str]:
        return self.blocks.pop()


class StateFile:
    """The bridge's state at `path`; every change is saved before the method returns."""

    VERSION = 1

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self.chains: dict[str, ChainTip] = {}
        self.cursors: dict[str, dict[str, int]] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as err:
            raise UsageError(f"cannot read the bridge's state file {self.path}: {err.strerror}") from None
        try:
            data = json.loads(raw)
            if data.get("version") != self.VERSION:
                raise ValueError(f"version {data.get('version')!r}, expected {self.VERSION}")
            self.chains = {name: ChainTip([(int(h), str(x)) for h, x in tip["blocks"]]) for name, tip in data["chains"].items()}
            self.cursors = {name: {k: int(v) for k, v in cursor.items()} for name, cursor in data.get("cursors", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise UsageError(f"the bridge's state file {self.path} is damaged ({err}); move it away to start over from the chains' tips") from None

    def chain(self, name: str) -> ChainTip:
        with self._lock:
            return self.chains.setdefault(name, ChainTip())

    def cursor(self, name: str) -> dict[str, int]:
        with self._lock:
            return dict(self.cursors.get(name, {}))

    def set_cursor(self, name: str, **values: int) -> None:
        with self._lock:
            self.cursors.setdefault(name, {}).update(values)
            self._save()

    def save(self) -> None:
        with self._lock:
            self._save()

    def _save(self) -> None:
        data: dict[str, Any] = {
            "version": self.VERSION,
            "chains": {name: {"blocks": tip.blocks} for name, tip in sorted(self.chains.items())},
            "cursors": self.cursors,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            json.dump(data, out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
