"""Per-post cache of teacher answers, keyed by the post's content, the teacher and the prompts.

The cache lives beside the stage's outputs, not among them: Snakemake deletes a failed job's
outputs, and the cache is what lets an interrupted run resume without asking again. Entries hold
the raw answers (before filtering), so filter and training-mix settings never re-ask.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from blogtune.io_utils import atomic_write_json


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def post_key(article_id: str, title: str, text: str, teacher: dict, prompts: dict) -> str:
    return digest({"article_id": article_id, "title": title, "text": digest(text), "teacher": teacher,
                   "prompts": prompts})


class PostCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> dict[str, str] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text(encoding="utf-8"))["answers"]
        except (ValueError, KeyError):
            return None  # a damaged entry is asked again

    def save(self, key: str, article_id: str, answers: dict[str, str]) -> None:
        atomic_write_json(self.path(key), {"article_id": article_id, "answers": answers})
