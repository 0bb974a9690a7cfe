"""Checks run when the workflow is parsed, before any job: fail in seconds, not after training.

Each failure names the config key or file and the fix. Cheap by design: it runs on every
`snakemake` call, including dry runs over blogs with thousands of posts.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from blogtune.model.base_model import BaseModelError, BaseModelSource, resolve_base_model

log = logging.getLogger(__name__)


class PreflightError(ValueError):
    pass


@dataclass
class Plan:
    blog_dir: Path
    posts: list[Path]
    index_missing: list[str]
    base_model: BaseModelSource
    base_model_files: list[Path] = field(default_factory=list)
    model_config: dict | None = None
    export_arch: str | None = None

    @property
    def post_fingerprint(self) -> list:
        fp = []
        for p in self.posts:
            st = p.stat()
            fp.append((str(p.relative_to(self.blog_dir)), st.st_size, st.st_mtime_ns))
        return fp


def resolve_blog_dir(blog: dict, workdir: Path) -> Path:
    blog_dir = Path(blog["dir"]).expanduser()
    if not blog_dir.is_absolute():
        blog_dir = workdir / blog_dir
    if not blog_dir.is_dir():
        raise PreflightError(f"blog.dir: folder not found: {blog_dir}")
    blog_dir = blog_dir.resolve()
    if workdir.resolve().is_relative_to(blog_dir):
        raise PreflightError(
            f"blog.dir: the workflow runs inside the blog folder {blog_dir}; run it from its own "
            "folder so results are never written into your blog"
        )
    return blog_dir


def select_posts(blog: dict, blog_dir: Path) -> tuple[list[Path], list[str]]:
    from blogtune.data.posts import discover_posts, select_from_index

    index = blog.get("index") or {}
    if index.get("file"):
        index_path = blog_dir / index["file"]
        if not index_path.is_file():
            raise PreflightError(f"blog.index.file: not found: {index_path}")
        try:
            sel = select_from_index(blog_dir, index["file"], index.get("marker"), index.get("keyword"))
        except ValueError as err:
            raise PreflightError(f"blog.index: {err}") from None
        for missing in sel.missing:
            log.warning("index lists %s but the file is missing; skipped", missing)
        for outside in getattr(sel, "outside", []):
            log.warning("index links to %s, outside the blog folder; skipped", outside)
        return sel.posts, list(sel.missing)
    return discover_posts(blog_dir, blog.get("pattern", "**/*.md"), blog.get("exclude", [])), []


def check_split(fractions: dict) -> None:
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise PreflightError(f"split.fractions: must add up to 1, they add up to {total:g} ({fractions})")


def local_model_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))


def read_known_config(source: BaseModelSource) -> dict | None:
    """config.json when we can know it without downloading anything."""
    if source.kind == "embedded":
        # The embedded GGUF is SmolLM2-135M: a llama-architecture model.
        return {
            "model_type": "llama", "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "vocab_size": 49152, "tie_word_embeddings": True,
        }
    if source.kind == "local":
        return json.loads((source.path / "config.json").read_text(encoding="utf-8"))
    from blogtune.model.model_checks import hub_model_folder  # cached, or its JSON files fetched now

    folder = hub_model_folder(source.spec)
    return json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder else None


def check_export(model_config: dict | None) -> str | None:
    if model_config is None:
        return None
    from blogtune.export.gguf import UnsupportedArchitectureError, check_exportable

    try:
        return check_exportable(model_config)
    except UnsupportedArchitectureError as err:
        raise PreflightError(f"base_model: {err}") from None


def available_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 16 * 1024**3


def check_memory(model_config: dict | None, config: dict) -> None:
    if model_config is None:
        return
    from blogtune.model.convert import accelerator, plan_conversion
    from blogtune.train import MemoryError_, TrainSettings, check_fits, estimate_memory

    m = config["model"]
    plan = plan_conversion(m["quantize"], m["bits"], m["group_size"], m["dtype"], accelerator())
    bits = plan.bits if plan.quantize else (32 if plan.dtype in (None, "float32") else 16)
    settings = TrainSettings.from_dict(config["train"])
    try:
        check_fits(estimate_memory(model_config, bits, settings), available_memory_bytes())
    except MemoryError_ as err:
        raise PreflightError(str(err)) from None


def run_preflight(config: dict, workdir: Path, check_machine_memory: bool = True) -> Plan:
    """check_machine_memory: compare training's estimate with THIS machine's memory. False where
    jobs run elsewhere (a cluster): the train job checks again on its node."""
    from blogtune.model.formatting import FormatError, validate_prompts
    from blogtune.model.model_checks import (
        ModelPreflightError,
        check_tokens,
        check_trust_remote_code,
        model_folder,
    )

    blog_dir = resolve_blog_dir(config["blog"], workdir)
    posts, missing = select_posts(config["blog"], blog_dir)
    if len(posts) < 2:
        raise PreflightError(
            f"blog.dir: found {len(posts)} post(s) in {blog_dir} (pattern {config['blog'].get('pattern')!r}); "
            "need at least 2 to split into train and valid"
        )
    check_split(config["split"]["fractions"])
    try:
        validate_prompts(config["format"].get("prompts") or {"default": "{title}"})
    except FormatError as err:
        raise PreflightError(str(err)) from None
    try:
        source = resolve_base_model(config["base_model"], workdir)
    except BaseModelError as err:
        raise PreflightError(str(err)) from None
    try:
        check_trust_remote_code(config["trust_remote_code"])
        model_config = read_known_config(source)
        check_tokens(model_folder(source), config["model"])
    except ModelPreflightError as err:
        raise PreflightError(str(err)) from None
    plan = Plan(blog_dir, posts, missing, source, model_config=model_config)
    if source.kind == "local":
        plan.base_model_files = local_model_files(source.path)
    plan.export_arch = check_export(model_config)
    if check_machine_memory:
        check_memory(model_config, config)
    return plan
