"""Once, end to end, on the real embedded model (SmolLM2-135M-Instruct) and the sample blog.

Few training steps: this proves every stage works on the real model and that the exported
GGUF, read back by transformers, continues a chat exactly like the fused MLX model and stops
at the end-of-turn token.
"""

from __future__ import annotations

import json

import pytest

from blogtune.testing import REPO, run_snakemake, write_config

E2E_TRAIN = {"iters": 6, "epochs": None, "batch_size": 2, "max_seq_length": 256, "num_layers": 4,
             "steps_per_report": 3, "steps_per_eval": 3, "save_every": 3, "val_batches": 2, "warmup_steps": 1}
E2E_EVAL = {"max_tokens": 24, "heldout_prompts": 1, "train_sample_articles": 1, "prompts": ["What is pg_tidy?"]}
# A small exam: the defaults (96 answers, budgets up to ~350 tokens) take 6-13 minutes here, and
# the exam's scoring is tested on tiny models; this proves it runs on the real model in both engines.
E2E_EXAM = {"max_items": 24, "generate_items": 6, "heldout_items": 1, "max_tokens": 24, "answer_room": 1.0}
QUESTION = [{"role": "user", "content": "What is PostgreSQL? Answer in one sentence."}]
N_TOKENS = 96  # the answer ends (<|im_end|>) after ~55 tokens


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("embedded")
    write_config(work, {"blog": {"dir": str(REPO / "sample_blog")}, "train": E2E_TRAIN,
                        "evaluate": E2E_EVAL, "exam": E2E_EXAM, "export": {"gguf_type": "f32"}})
    run_snakemake(work, timeout=900)
    return work / "results" / "smollm2-135m-instruct"


def mlx_greedy(model_dir, prompt: str) -> list[int]:
    from blogtune.blas import use_fast_blas

    use_fast_blas()
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(model_dir))
    out = []
    for resp in stream_generate(model, tokenizer, prompt, max_tokens=N_TOKENS, sampler=make_sampler(temp=0.0)):
        out.append(resp.token)
    return out


def gguf_greedy(gguf_path, prompt: str) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = model.generate(ids, max_new_tokens=N_TOKENS, do_sample=False, eos_token_id=tok.eos_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_every_stage_ran(run_dir):
    assert (run_dir / "fused/config.json").is_file()
    summary = json.loads((run_dir / "train/summary.json").read_text())
    assert summary["iters"] == E2E_TRAIN["iters"]
    modelfile = (run_dir / "gguf/Modelfile").read_text()
    assert modelfile.startswith("FROM ./") or "\nFROM ./" in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "TEMPLATE" in modelfile
    metrics = json.loads((run_dir / "report/metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert test["tokens"] > 0 and test["loss_before"] > 0 and test["loss_after"] > 0


def test_gguf_continues_like_the_fused_mlx_model_and_stops(run_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run_dir / "fused")
    prompt = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    (gguf,) = (run_dir / "gguf").glob("*.gguf")
    mlx_ids = mlx_greedy(run_dir / "fused", prompt)
    gguf_ids = gguf_greedy(gguf, prompt)
    assert tokenizer.eos_token_id in mlx_ids, tokenizer.decode(mlx_ids)
    end = mlx_ids.index(tokenizer.eos_token_id) + 1
    assert gguf_ids[:end] == mlx_ids[:end], (tokenizer.decode(mlx_ids), tokenizer.decode(gguf_ids))
