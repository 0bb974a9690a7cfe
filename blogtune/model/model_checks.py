"""Preflight checks about the base model itself: its config and tokenizer files, read before any
work so that an architecture the GGUF export cannot write, a run that would not fit in memory, or
special tokens that would keep the model from stopping fail in seconds, not after training.

A Hugging Face repo id that is not cached yet gets its small JSON files (config.json, tokenizer
config, generation config, chat template) fetched alone; the weights come later, in convert.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from blogtune.model.base_model import BaseModelSource

log = logging.getLogger(__name__)

# config.json is required; the rest tell preflight about the special tokens when the repo has them.
HUB_PREFLIGHT_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                       "chat_template.jinja")


class ModelPreflightError(ValueError):
    pass


def check_trust_remote_code(value: bool) -> None:
    """Refused rather than half-honoured: format, train, fuse, evaluate and the Modelfile load the
    model with transformers/mlx-lm's own classes, and every architecture the GGUF export writes is
    built into both, so code from a model repository would run in one stage and not the others."""
    if value:
        raise ModelPreflightError(
            "trust_remote_code: true is not supported: blogtune never runs code shipped in a model "
            "repository (every architecture it can export to GGUF is built into transformers and mlx-lm, "
            "and a stage that ran the repository's code would disagree with the others). "
            "Set trust_remote_code: false and pick a model whose architecture transformers includes"
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def hub_model_folder(repo_id: str) -> Path | None:
    """The snapshot folder holding the repo's config.json (cached, or fetched now with its small
    tokenizer files); None only when offline and not cached (resolve_base_model reports that)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    if _offline():
        return None
    folder = None
    for name in HUB_PREFLIGHT_FILES:
        try:
            path = Path(hf_hub_download(repo_id, name))
        except RemoteEntryNotFoundError:  # (its sibling LocalEntryNotFoundError means: no connection)
            if name == "config.json":
                raise ModelPreflightError(
                    f"base_model: {repo_id!r} has no config.json on the Hugging Face Hub (not a transformers model)"
                ) from None
            continue
        except Exception as err:  # noqa: BLE001 - network, auth, unknown repo: all end the run here
            if name != "config.json":
                log.warning("base_model: could not fetch %s of %s (%s); skipped", name, repo_id, err)
                continue
            raise ModelPreflightError(
                f"base_model: could not fetch config.json of {repo_id!r} from the Hugging Face Hub "
                f"({type(err).__name__}: {err}); check the repo id and the network (or HF_TOKEN for a gated "
                "model), or point base_model at a local folder"
            ) from None
        folder = path.parent
        log.info("base_model: fetched %s of %s for the preflight checks", name, repo_id)
    return folder


def model_folder(source: BaseModelSource) -> Path | None:
    """Where the base model's config and tokenizer JSON files can be read now (None: embedded)."""
    if source.kind == "local":
        return source.path
    if source.kind == "hub":
        return hub_model_folder(source.spec)
    return None


def check_tokens(folder: Path | None, model: dict) -> None:
    from blogtune.model.special_tokens import SpecialTokenError, check_special_tokens

    if folder is None:
        return  # the embedded SmolLM2 is known to be consistent
    try:
        check_special_tokens(folder, model.get("eos_token"), model.get("bos_token"))
    except SpecialTokenError as err:
        raise ModelPreflightError(str(err)) from None
