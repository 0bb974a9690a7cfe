"""Tokenizer export: HF tokenizer files -> GGUF `tokenizer.*` keys.

Two vocabulary kinds (notes §2):
- byte-level BPE (tokenizer.json without byte_fallback: SmolLM2, Qwen, Llama 3) -> `gpt2`,
  with `tokenizer.ggml.pre` found by hashing the encoding of llama.cpp's probe string;
- SentencePiece (tokenizer.model, or a tokenizer.json BPE with byte_fallback as transformers 5
  writes for Llama 2 / Mistral / Gemma / Phi-3) -> `llama`, with scores.

Special ids, merges and the chat template (including the chat_template.jinja sidecar) come from
gguf.SpecialVocab; whether BOS/EOS are added is measured on the tokenizer itself, since that is
what training saw.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import sha256
from importlib import resources
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from blogtune.export.gguf.architectures import ExportError

log = logging.getLogger(__name__)

_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# llama.cpp's does_token_look_special: such added tokens are CONTROL even if not flagged special
_LOOKS_SPECIAL = re.compile(r"^(<\|.*\|>|<｜.*｜>|<unused.*>|<pad>|<mask>)$")


@dataclass
class VocabExport:
    model: str  # "gpt2" | "llama"
    pre: str
    pre_source: str  # the rule that chose `pre`: "hash" | "override" | "sentencepiece"
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool | None = None
    add_eos: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: Any = None


# ---------------------------------------------------------------------------------------------
# the pre-tokenizer probe


@lru_cache(maxsize=1)
def chktxt() -> str:
    """llama.cpp's probe string, byte-exact (kept as a data file; one changed byte changes every hash)."""
    data = resources.files("blogtune.export.gguf").joinpath("data/chktxt.txt").read_bytes()
    return data.decode("utf-8")


@lru_cache(maxsize=1)
def pre_hash_table() -> dict[str, str]:
    raw = resources.files("blogtune.export.gguf").joinpath("data/pre_hashes.json").read_text(encoding="utf-8")
    return {h: entry["pre"] for h, entry in json.loads(raw)["hashes"].items()}


def chkhsh(tokenizer: Any) -> str:
    return sha256(str(tokenizer.encode(chktxt())).encode()).hexdigest()


PRE_TOKENIZER_KEY = "export.pre_tokenizer"


def detect_pre(tokenizer: Any, model_type: str, n_tokens: int, override: str | None = None) -> tuple[str, str]:
    """(pre name, the rule that chose it: "override" or "hash").

    No guessing from the model family or the vocabulary size: a wrong pre-tokenizer makes
    llama.cpp split text differently from training without any error, so an unknown hash stops
    the export and names the config key that settles it.
    """
    if override:
        log.info("pre-tokenizer %r set by %s", override, PRE_TOKENIZER_KEY)
        return override, "override"
    digest = chkhsh(tokenizer)
    known = pre_hash_table().get(digest)
    if known:
        log.info("pre-tokenizer %r (chkhsh %s…)", known, digest[:12])
        return known, "hash"
    raise ExportError(
        f"unknown BPE pre-tokenizer (chkhsh {digest}, model_type {model_type}, {n_tokens} tokens): "
        "llama.cpp would split text differently from training. Set "
        f"{PRE_TOKENIZER_KEY} in config.yaml to the llama.cpp pre-tokenizer name of this tokenizer "
        "(e.g. 'llama-bpe', 'qwen2', 'smollm', 'gpt-2') once you have checked which one it is."
    )


# ---------------------------------------------------------------------------------------------
# loading


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def added_tokens(model_dir: Path) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) from tokenizer.json, else tokenizer_config's added_tokens_decoder."""
    found: dict[int, tuple[str, bool]] = {}
    for tok in _read_json(model_dir / "tokenizer.json").get("added_tokens", []):
        found[int(tok["id"])] = (tok["content"], bool(tok.get("special")))
    if not found:
        decoder = _read_json(model_dir / "tokenizer_config.json").get("added_tokens_decoder") or {}
        for tid, tok in decoder.items():
            found[int(tid)] = (tok["content"], bool(tok.get("special")))
    return found


def tokenizer_kind(model_dir: Path) -> str:
    """'gpt2' or 'llama' (SentencePiece-style); ExportError when the files are missing or exotic."""
    tj = _read_json(model_dir / "tokenizer.json")
    if tj:
        model = tj.get("model", {})
        if model.get("type") == "BPE":
            return "llama" if model.get("byte_fallback") else "gpt2"
        if (model_dir / "tokenizer.model").is_file():
            return "llama"
        raise ExportError(f"tokenizer.json model type {model.get('type')!r} is not supported for GGUF export")
    if (model_dir / "tokenizer.model").is_file():
        return "llama"
    raise ExportError(
        f"{model_dir} has no tokenizer.json or tokenizer.model: copy the tokenizer files from the base model "
        "into the fused folder (mlx_lm.fuse normally does)"
    )


class JsonTokenizer:
    """The part of a tokenizer the export needs (encode, size, special ids), from tokenizer.json alone.

    Read with `tokenizers` rather than transformers: importing transformers' AutoTokenizer pulls in
    torch, ~280 MB of resident memory that would dominate the export's peak (measured).
    """

    def __init__(self, model_dir: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = {
            **_read_json(model_dir / "special_tokens_map.json"),
            **_read_json(model_dir / "tokenizer_config.json"),
        }
        for kind in ("bos", "eos", "unk", "pad"):
            token = config.get(f"{kind}_token")
            if isinstance(token, dict):  # older files: {"content": "<s>", ...}
                token = token.get("content")
            setattr(
                self, f"{kind}_token_id", self._tok.token_to_id(token) if isinstance(token, str) else None
            )

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


def load_hf_tokenizer(model_dir: Path) -> Any:
    if (model_dir / "tokenizer.json").is_file():
        return JsonTokenizer(model_dir)
    from transformers import AutoTokenizer  # a bare tokenizer.model needs transformers' conversion

    return AutoTokenizer.from_pretrained(str(model_dir))


def _probe_add_flags(tokenizer: Any) -> tuple[bool | None, bool | None]:
    """Does encoding plain text add BOS / EOS? Measured, not read from config flags."""
    try:
        ids = tokenizer.encode("hello")
    except Exception:  # noqa: BLE001 - a tokenizer that cannot encode leaves the flags unset
        return None, None
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bool(ids) and bos is not None and ids[0] == bos
    add_eos = bool(ids) and eos is not None and ids[-1] == eos and len(ids) > 1
    return add_bos, add_eos


def _bpe_tokens(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int]]:
    tj = _read_json(model_dir / "tokenizer.json")
    vocab: dict[str, int] = tj["model"]["vocab"]
    tokens: list[str | None] = [None] * n_vocab
    types = [int(TokenType.NORMAL)] * n_vocab
    for text, tid in vocab.items():
        if tid < n_vocab:
            tokens[tid] = text
    for tid, (content, special) in added_tokens(model_dir).items():
        if tid >= n_vocab:
            log.warning(
                "added token %r (id %d) is beyond the embedding (%d rows); dropped", content, tid, n_vocab
            )
            continue
        tokens[tid] = content  # added tokens are stored as raw text, not byte-level encoded
        types[tid] = int(
            TokenType.CONTROL if special or _LOOKS_SPECIAL.match(content) else TokenType.USER_DEFINED
        )
    return _fill_unused(tokens, types)


def _fill_unused(tokens: list[str | None], types: list[int]) -> tuple[list[str], list[int]]:
    """Embedding rows with no token (config vocab > tokenizer) get llama.cpp's [PAD{id}] placeholder."""
    out = []
    for tid, text in enumerate(tokens):
        if text is None:
            text = f"[PAD{tid}]"
            types[tid] = int(TokenType.UNUSED)
        out.append(text)
    return out, types


def _spm_tokens_from_model(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int], list[float]]:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(model_dir / "tokenizer.model"))
    tokens: list[str | None] = [None] * n_vocab
    types = [int(TokenType.NORMAL)] * n_vocab
    scores = [-10000.0] * n_vocab
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = float(sp.GetScore(i))
        if sp.IsUnknown(i):
            types[i] = int(TokenType.UNKNOWN)
        elif sp.IsControl(i):
            types[i] = int(TokenType.CONTROL)
        elif sp.IsUnused(i):
            types[i] = int(TokenType.UNUSED)
        elif sp.IsByte(i):
            types[i] = int(TokenType.BYTE)
    _overlay_added(model_dir, tokens, types, scores)
    tokens_out, types = _fill_unused(tokens, types)
    return tokens_out, types, scores


def _spm_tokens_from_json(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int], list[float]]:
    """SentencePiece vocab that transformers 5 saved as a byte_fallback BPE tokenizer.json.

    Scores are rebuilt from merge ranks (rank r -> score -r): SentencePiece merges the pair whose
    result scores highest, tokenizers merges the lowest rank, so this keeps the same order.
    """
    tj = _read_json(model_dir / "tokenizer.json")
    model = tj["model"]
    vocab: dict[str, int] = model["vocab"]
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        ranks.setdefault(left + right, rank)
    n_merges = len(ranks)
    unk = model.get("unk_token")
    tokens: list[str | None] = [None] * n_vocab
    types = [int(TokenType.NORMAL)] * n_vocab
    scores = [-10000.0] * n_vocab
    for text, tid in vocab.items():
        if tid >= n_vocab:
            continue
        tokens[tid] = text
        if _BYTE_TOKEN.match(text):
            types[tid], scores[tid] = int(TokenType.BYTE), 0.0
        elif text == unk:
            types[tid], scores[tid] = int(TokenType.UNKNOWN), 0.0
        elif text in ranks:
            scores[tid] = -float(ranks[text])
        else:
            scores[tid] = -float(n_merges + tid)  # single symbols: never a merge result
    _overlay_added(model_dir, tokens, types, scores)
    tokens_out, types = _fill_unused(tokens, types)
    return tokens_out, types, scores


def _overlay_added(model_dir: Path, tokens: list, types: list[int], scores: list[float]) -> None:
    for tid, (content, special) in added_tokens(model_dir).items():
        if tid >= len(tokens):
            log.warning("added token %r (id %d) is beyond the embedding; dropped", content, tid)
            continue
        if types[tid] in (int(TokenType.UNKNOWN), int(TokenType.BYTE)):
            continue
        tokens[tid] = content
        types[tid] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
        scores[tid] = 0.0 if special else -1000.0


def _space_prefix(model_dir: Path, model_type: str) -> bool:
    """Does the SentencePiece tokenizer prepend '▁' to the text? Gemma does not."""
    if model_type.startswith("gemma"):
        return False
    tj = _read_json(model_dir / "tokenizer.json")
    if tj:

        def walk(node: Any) -> list[dict]:
            if not isinstance(node, dict):
                return []
            inner = node.get("pretokenizers") or node.get("normalizers") or []
            return [node] + [n for child in inner for n in walk(child)]

        for node in walk(tj.get("pre_tokenizer")) + walk(tj.get("normalizer")):
            if node.get("type") == "Metaspace":
                return node.get("prepend_scheme", "always") != "never" and node.get("add_prefix_space", True)
            if node.get("type") == "Prepend":
                return True
        return False
    flag = _read_json(model_dir / "tokenizer_config.json").get("add_prefix_space")
    return True if flag is None else bool(flag)


def load_vocab(
    model_dir: Path,
    n_vocab: int,
    model_type: str,
    pre_override: str | None = None,
    tokenizer: Any = None,
) -> VocabExport:
    """Everything the GGUF needs about the tokenizer of `model_dir`, sized to `n_vocab` rows."""
    model_dir = Path(model_dir)
    kind = tokenizer_kind(model_dir)
    tokenizer = tokenizer if tokenizer is not None else load_hf_tokenizer(model_dir)
    special = gguf.SpecialVocab(model_dir, load_merges=(kind == "gpt2"), n_vocab=n_vocab)
    add_bos, add_eos = _probe_add_flags(tokenizer)
    if kind == "gpt2":
        tokens, types = _bpe_tokens(model_dir, n_vocab)
        pre, source = detect_pre(tokenizer, model_type, len(tokenizer), pre_override)
        if not special.merges:
            raise ExportError("byte-level BPE tokenizer without merges: llama.cpp cannot load it")
        vocab = VocabExport("gpt2", pre, source, tokens, types, merges=list(special.merges))
    else:
        if (model_dir / "tokenizer.model").is_file():
            tokens, types, scores = _spm_tokens_from_model(model_dir, n_vocab)
        else:
            tokens, types, scores = _spm_tokens_from_json(model_dir, n_vocab)
        vocab = VocabExport("llama", "default", "sentencepiece", tokens, types, scores=scores)
        vocab.add_space_prefix = _space_prefix(model_dir, model_type)
    vocab.special_ids = dict(special.special_token_ids)
    # SpecialVocab resolves ids only through tokenizer.json's added_tokens or config.json; a bare
    # tokenizer.model folder has neither, but the loaded tokenizer knows its specials.
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if kind not in vocab.special_ids and isinstance(tid, int) and 0 <= tid < n_vocab:
            vocab.special_ids[kind] = tid
    vocab.add_bos, vocab.add_eos = add_bos, add_eos
    vocab.chat_template = special.chat_template
    if vocab.chat_template is None:
        log.warning("no chat template found in %s (tokenizer_config.json or chat_template.jinja)", model_dir)
    _check_special_ids(vocab)
    return vocab


def _check_special_ids(vocab: VocabExport) -> None:
    for kind, tid in vocab.special_ids.items():
        if not 0 <= tid < len(vocab.tokens):
            raise ExportError(
                f"{kind} token id {tid} is outside the vocabulary of {len(vocab.tokens)} tokens"
            )
    if "eos" not in vocab.special_ids:
        log.warning("the tokenizer names no EOS token; llama.cpp will rely on end-of-generation token texts")


def add_to_writer(vocab: VocabExport, w: gguf.GGUFWriter) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges:
        w.add_token_merges(vocab.merges)
    for kind, tid in vocab.special_ids.items():
        handler = getattr(w, f"add_{kind}_token_id", None)
        if handler is not None:
            handler(tid)
    if vocab.add_bos is not None:
        w.add_add_bos_token(vocab.add_bos)
    if vocab.add_eos is not None:
        w.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template is not None:
        w.add_chat_template(vocab.chat_template)
