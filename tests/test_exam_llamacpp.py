"""The GGUF in llama.cpp: greedy tokens agree with MLX (f32/f16, tied/untied, non-default rope),
the Modelfile's template/stops/sampling are the ones used, and a missing engine is a skip."""

from __future__ import annotations

import sys

import llama_cpp  # noqa: F401  (a dev requirement: setup.sh --dev builds it)
import pytest

from blogtune.exam import llamacpp
from blogtune.export.gguf import export_gguf
from blogtune.model.convert import rope_overrides

PROMPTS = [
    "<|im_start|>user\nWhat is pg_tidy and what does it do?<|im_end|>\n<|im_start|>assistant\n",
    "PostgreSQL VACUUM marks dead tuples reusable; autovacuum",
]
# Non-default where a wrong GGUF key would show: rope base, rms eps; larger init so logits are
# peaked and greedy ties (which f16 rounding could flip) are unlikely.
SETTINGS = dict(rope_theta=31337.0, rms_norm_eps=1e-6, initializer_range=0.2)


@pytest.fixture(scope="module", params=[True, False], ids=["tied", "untied"])
def tiny(request, tiny_model_factory):
    return tiny_model_factory("llama", tie_word_embeddings=request.param, **SETTINGS)


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_greedy_tokens_agree_with_mlx(tiny, outtype, tmp_path):
    gguf = tmp_path / f"m-{outtype}.gguf"
    export_gguf(tiny, gguf, outtype)
    llm = llamacpp.load(gguf, n_ctx=256)
    assert float(llm.metadata["llama.rope.freq_base"]) == SETTINGS["rope_theta"]
    ag = llamacpp.greedy_agreement(llm, tiny, PROMPTS, 16)
    assert ag["identical"] == len(PROMPTS), ag["per_prompt"]
    # Along llama.cpp's own tokens, MLX rates each as its top one, give or take rounding.
    assert ag["consistent"] == len(PROMPTS) and ag["max_gap_nats"] <= llamacpp.TIE_NATS, ag["per_prompt"]
    assert all(len(p["llama_cpp"]) == 16 for p in ag["per_prompt"])


def test_a_wrong_rope_base_is_caught(tiny, tmp_path):
    """Negative control: the comparison is sensitive to the setting a wrong key would lose."""
    from mlx_lm import load

    gguf = tmp_path / "m.gguf"
    export_gguf(tiny, gguf, "f32")
    llm = llamacpp.load(gguf, n_ctx=256)
    model, _ = load(str(tiny), model_config={"rope_theta": 10000.0})
    ids = llamacpp.prompt_ids(llm, PROMPTS[0])
    theirs = llamacpp.greedy_tokens(llm, ids, 16)
    assert theirs != llamacpp.mlx_greedy_tokens(model, ids, 16)
    # The gap check tells this apart from a rounding tie: the wrong model rates llama.cpp's
    # picks far below its own, the right one rates them as its own.
    assert max(llamacpp.mlx_gaps(model, ids, theirs)) > 10 * llamacpp.TIE_NATS
    right, _ = load(str(tiny), model_config=rope_overrides(tiny))
    assert max(llamacpp.mlx_gaps(right, ids, theirs)) <= llamacpp.TIE_NATS


def test_gaps_are_zero_on_mlx_greedy_path_and_positive_off_it(tiny):
    """mlx_gaps computed independently: 0 along MLX's own greedy tokens; for a swapped token,
    the difference of the two log-probabilities a plain forward pass gives."""
    import mlx.core as mx
    from mlx_lm import load

    model, tok = load(str(tiny), model_config=rope_overrides(tiny))
    ids = tok.encode(PROMPTS[1])
    greedy = llamacpp.mlx_greedy_tokens(model, ids, 6)
    assert llamacpp.mlx_gaps(model, ids, greedy) == [0.0] * 6
    logits = model(mx.array([ids + greedy[:2]]))[0, -1].astype(mx.float32)
    logp = logits - mx.logsumexp(logits)
    runner_up = int(mx.argsort(-logp)[1].item())
    gaps = llamacpp.mlx_gaps(model, ids, [*greedy[:2], runner_up])
    assert gaps[:2] == [0.0, 0.0]
    assert gaps[2] == pytest.approx(float(logp.max() - logp[runner_up]), abs=1e-4) and gaps[2] > 0


@pytest.fixture(scope="module")
def shipped(tiny_model_factory, tmp_path_factory):
    """A fused-model folder, its GGUF and the Modelfile blogtune writes for it."""
    from blogtune.export.modelfile import write_modelfile
    from blogtune.model.chat_format import load_family

    fused = tiny_model_factory("llama", **SETTINGS)
    out = tmp_path_factory.mktemp("shipped")
    export_gguf(fused, out / "m.gguf", "f16")
    params = {"temperature": 0.7, "top_p": 0.9, "num_ctx": 512, "repeat_penalty": 1.1}
    write_modelfile(out / "Modelfile", "m.gguf", load_family(fused), None, params)
    return fused, out, params


ITEMS = [
    {"item_id": "a", "split": "train", "lang": "en", "question": "What does pg_tidy do?", "answer": "reclaims bloat"},
    {"item_id": "b", "split": "test", "lang": "zh", "question": "哪个参数限制锁等待？", "answer": "--lock-timeout"},
]


def test_gguf_check_uses_the_modelfile_settings(shipped):
    fused, out, params = shipped
    metrics, rows = llamacpp.gguf_check(out / "m.gguf", fused, out / "Modelfile", ITEMS, system=None, parameters=params, template=None, max_tokens=8, agreement_prompts=2, agreement_tokens=8)
    assert metrics["status"] == "ok" and metrics["template_in_modelfile"] is True
    text = (out / "Modelfile").read_text()
    for stop in metrics["stops"]:
        assert f'PARAMETER stop "{stop}"' in text
    assert "<|im_end|>" in metrics["stops"]
    assert {k: metrics["sampling"][k] for k in ("temperature", "top_p", "repeat_penalty")} == {"temperature": 0.7, "top_p": 0.9, "repeat_penalty": 1.1}
    assert metrics["greedy_agreement_with_mlx"]["identical"] == 2
    assert metrics["greedy_vs_mlx_exam"] is None  # these items carry no MLX exam answers
    for mode in ("modelfile_sampling", "greedy"):
        s = metrics["all"][mode]
        assert s["answers"] == 2
        got = [r[mode] for r in rows]
        assert s["stop_rate"]["k"] == sum(a["finish"] == "stop" for a in got)
        assert all(a["finish"] in ("stop", "length") for a in got)
        assert all(a["tokens"] <= 8 for a in got)
    for lang, r in metrics["stop_rate_by_lang"].items():  # Modelfile sampling, per language
        assert (r["n"], r["k"]) == (1, sum(x["modelfile_sampling"]["finish"] == "stop" for x, it in zip(rows, ITEMS, strict=True) if it["lang"] == lang))
    assert sorted(metrics["stop_rate_by_lang"]) == ["en", "zh"]
    # The prompt is the chat family's rendering: SmolLM2's default system turn, then the question.
    serving = llamacpp.serving_from_modelfile(fused, out / "Modelfile", None, params, None)
    prompt = llamacpp.render(serving, "Q?")
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n")


def test_greedy_answers_are_held_against_the_mlx_exam_on_the_first_items(shipped):
    fused, out, params = shipped
    first = llamacpp.gguf_check(out / "m.gguf", fused, out / "Modelfile", ITEMS[:1], system=None, parameters=params, template=None, max_tokens=8)[1][0]["greedy"]
    # The MLX exam's rows: item 0 answered exactly as llama.cpp did, item 1 differently.
    items = [
        {**ITEMS[0], "finetuned": {"answer": " " + first["text"] + " ", "finish": first["finish"]}},
        {**ITEMS[1], "finetuned": {"answer": first["text"] + " and more", "finish": "length"}},
    ]
    metrics, rows = llamacpp.gguf_check(out / "m.gguf", fused, out / "Modelfile", items, system=None, parameters=params, template=None, max_tokens=8, greedy_items=1)
    assert metrics["all"]["modelfile_sampling"]["answers"] == 2 and metrics["all"]["greedy"]["answers"] == 1
    assert "greedy" in rows[0] and "greedy" not in rows[1] and "modelfile_sampling" in rows[1]
    vs = metrics["greedy_vs_mlx_exam"]
    assert vs["items"] == 1 and vs["identical_text"] == 1 and vs["same_finish"] == 1
    assert vs["mlx_stop_rate"]["k"] == (first["finish"] == "stop")


def test_a_stale_modelfile_template_is_reported(shipped, tmp_path):
    fused, out, params = shipped
    stale = tmp_path / "Modelfile"
    stale.write_text((out / "Modelfile").read_text().replace("<|im_start|>assistant", "<|im_start|>bot"))
    serving = llamacpp.serving_from_modelfile(fused, stale, None, params, None)
    assert serving.template_in_modelfile is False


def test_without_llama_cpp_the_check_is_skipped(shipped, monkeypatch):
    fused, out, params = shipped
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import now raises ImportError
    metrics, rows = llamacpp.gguf_check(out / "m.gguf", fused, out / "Modelfile", ITEMS, system=None, parameters=params, template=None, max_tokens=8)
    assert metrics == {"status": "skipped: llama-cpp-python not installed"} and rows == []


def test_the_repeat_penalty_is_llama_cpps_over_a_window():
    """Each distinct token in the last `last_n` ids once: positive logits divided, negative
    multiplied; tokens outside the window untouched; last_n 0 turns it off, -1 is the context."""
    import numpy as np

    scores = np.array([2.0, -2.0, 4.0, 1.0, -1.0], dtype=np.float32)
    got = llamacpp.repeat_penalty_over_prompt(2.0, 3, 512)(np.array([3, 0, 1, 1, 0]), scores.copy())
    assert got.tolist() == [1.0, -4.0, 4.0, 1.0, -1.0]  # window [1, 1, 0]: token 3 fell out
    assert llamacpp.repeat_penalty_over_prompt(2.0, 0, 512)(np.array([0, 1]), scores.copy()).tolist() == scores.tolist()
    whole = llamacpp.repeat_penalty_over_prompt(2.0, -1, 512)(np.array([3, 0, 1]), scores.copy())
    assert whole.tolist() == [1.0, -4.0, 4.0, 0.5, -1.0]


def test_sampled_answers_penalise_the_prompt_like_ollama(shipped, monkeypatch):
    """Ollama and llama-server put the prompt through the sampler, so its last tokens (the chat
    template's end-of-turn among them) are in the penalty window from the first answer token on.
    The engine hands the penalty prompt + answer so far and samples from what it returns (top_k 1:
    the argmax). A penalty below 1 favours the window instead, so the first answer token must be
    a prompt token, which this model's raw favourite is not."""
    import numpy as np

    fused, out, params = shipped
    llm = llamacpp.load(out / "m.gguf", n_ctx=512)
    ids = llamacpp.prompt_ids(llm, PROMPTS[0])
    seen: list[tuple[list[int], np.ndarray, np.ndarray]] = []
    made = llamacpp.repeat_penalty_over_prompt

    def recording(penalty, last_n, n_ctx):
        inner = made(penalty, last_n, n_ctx)

        def apply(input_ids, scores):
            raw = scores.copy()
            out = inner(input_ids, scores)
            seen.append((list(input_ids), raw, out.copy()))
            return out

        return apply

    monkeypatch.setattr(llamacpp, "repeat_penalty_over_prompt", recording)
    sampling = {"temperature": 0.7, "top_p": 1.0, "top_k": 1, "min_p": 0.0, "repeat_penalty": 0.02, "repeat_last_n": 64, "seed": 0}
    answer = llamacpp.complete(llm, ids, 6, [], sampling)
    assert seen[0][0] == ids  # the first answer token already sees the prompt in its window
    assert answer["tokens"] == len(seen) == 6
    for (window, _, out), (following, _, _) in zip(seen, seen[1:], strict=False):  # it sampled from our logits
        assert following == window + [int(np.argmax(out))]
    _, raw, out = seen[0]
    assert int(np.argmax(out)) in ids[-64:] and int(np.argmax(raw)) not in ids
