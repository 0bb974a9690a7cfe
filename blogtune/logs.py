"""Logging for rule scripts: one readable line per step, to the rule's log file and stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(
    log_file: str | Path | None = None, level: int = logging.INFO, append: bool = False
) -> None:
    """append: add to log_file (a process started by one that logs there already)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a" if append else "w", encoding="utf-8"))
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", handlers=handlers, force=True)


def snakemake_log(smk) -> str | None:
    """The first log file of a Snakemake job, if the rule declared one."""
    return smk.log[0] if len(smk.log) else None
