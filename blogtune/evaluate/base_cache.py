"""The base model's half of evaluation and of the exam, kept between runs.

Evaluation and the exam score the base model and base + adapters on the same data. After a
LoRA setting changes, only the adapters are new: the base half (on the sample blog here, ~100 s
of evaluate and ~3 min of the exam on the CPU) would come out the same. It is stored under a key
made of everything it depends on (the base model's files, the data it scored, the settings, the
mlx and mlx-lm versions), so a rerun with new adapters loads it and any other change computes it
again. A cache file is written whole (atomic) once the base half is done; the newest KEEP entries
stay.
"""

from __future__ import annotations

import hashlib
import json
import logging
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from blogtune.io_utils import atomic_write_json

log = logging.getLogger(__name__)
KEEP = 4
FORMAT = 1  # bump when what a cache entry holds changes


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over the names and contents of the model folder's files (weights, config, tokenizer)."""
    h = hashlib.sha256()
    root = Path(model_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("mlx", "mlx-lm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "none"
    return out


def cache_key(model_dir: str | Path, *parts: Any) -> str:
    """Key of a base half: the model's files, the given parts (data, settings), package versions."""
    payload = json.dumps([FORMAT, model_fingerprint(model_dir), _versions(), parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


class BaseCache:
    """Entries `<key>.json` in `folder`; None as folder: a cache that never hits and keeps nothing."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    def load(self, key: str) -> dict | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        log.info("base model results from the cache (%s): the base model and what it scores are unchanged", path)
        path.touch()  # most recently used
        return value

    def save(self, key: str, value: dict) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.folder / f"{key}.json", value)
        entries = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)
