"""Preflight about the base model: a Hugging Face repo id that is not cached yet gets its config
and tokenizer JSON fetched alone, so the export-architecture, memory and special-token checks run
before any work (issue 13 item 7); trust_remote_code is refused with a message (item 9).

The Hub is a real HTTP server on 127.0.0.1 that serves the Hub's `resolve` URLs (HF_ENDPOINT
points huggingface_hub at it), run through `snakemake -n` as a user would."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blogtune.testing import REPO, run_snakemake, write_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 49152,
         "tie_word_embeddings": True}


class FakeHub:
    """Serves {repo: {file: bytes}} at /{repo}/resolve/{rev}/{file} like the Hub; logs every path."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.requests = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append(self.path)
                parts = self.path.split("?")[0].strip("/").split("/")
                repo, rest = "/".join(parts[:2]), parts[2:]
                if repo not in hub.repos:
                    return self._error(404, "RepoNotFound")
                if len(rest) < 3 or rest[0] != "resolve":
                    return self._error(404, "EntryNotFound")
                data = hub.repos[repo].get("/".join(rest[2:]))
                if data is None:
                    return self._error(404, "EntryNotFound")
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, code: int, kind: str) -> None:
                self.send_response(code)
                self.send_header("X-Error-Code", kind)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):  # noqa: N802
                self._answer(body=False)

            def do_GET(self):  # noqa: N802
                self._answer(body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def files(config: dict, tokenizer_config: dict | None = None) -> dict[str, bytes]:
    out = {"config.json": json.dumps(config).encode(), "model.safetensors": b"\0" * 64}
    if tokenizer_config is not None:
        out["tokenizer_config.json"] = json.dumps(tokenizer_config).encode()
    return out


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return monkeypatch


def blog_with_posts(dst: Path, n: int) -> Path:
    for p in sorted(p for p in (REPO / "sample_blog").rglob("*.md") if p.name != "README.md")[:n]:
        target = dst / p.relative_to(REPO / "sample_blog")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    return dst


def dry_run(tmp_path: Path, **cfg):
    work = tmp_path / "work"
    blog = blog_with_posts(tmp_path / "blog", 3)
    write_config(work, {"blog": {"dir": str(blog)}, **cfg})
    proc = run_snakemake(work, "-n", "fuse", check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_uncached_repo_id_gets_config_fetched_and_export_arch_checked(tmp_path, hub_env):
    moe = {**LLAMA, "model_type": "mixtral", "num_local_experts": 8}
    with FakeHub({"acme/tiny-moe": files(moe)}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        rc, out = dry_run(tmp_path, base_model="acme/tiny-moe")
    assert rc != 0
    assert "GGUF export does not support model_type 'mixtral'" in out, out[-3000:]
    fetched = {p.split("?")[0].rsplit("/", 1)[-1] for p in hub.requests}
    assert "config.json" in fetched and "model.safetensors" not in fetched  # JSON only, no weights


def test_uncached_repo_id_gets_memory_checked(tmp_path, hub_env):
    huge = {**LLAMA, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 800,  # ~30 TB: fails on any machine
            "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256}
    with FakeHub({"acme/huge-llama": files(huge)}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        rc, out = dry_run(tmp_path, base_model="acme/huge-llama")
    assert rc != 0 and "training needs ~" in out and "train.batch_size" in out, out[-3000:]


def test_fetched_files_are_cached_and_offline_uncached_is_a_clear_error(tmp_path, hub_env):
    tok_cfg = {"eos_token": "<|im_end|>", "added_tokens_decoder": {"2": {"content": "<|im_end|>", "special": True}}}
    with FakeHub({"acme/tiny-llama": files(LLAMA, tok_cfg)}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        rc, out = dry_run(tmp_path, base_model="acme/tiny-llama")
    assert rc == 0, out[-3000:]
    # The server is gone and the machine offline: the cached JSON still serves the preflight.
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    rc, out = dry_run(tmp_path / "again", base_model="acme/tiny-llama")
    assert rc == 0, out[-3000:]
    rc, out = dry_run(tmp_path / "other", base_model="acme/never-fetched")
    assert rc != 0 and "HF_HUB_OFFLINE is set and it is not in the local cache" in out


def test_unreachable_hub_names_the_repo_and_the_fix(tmp_path, hub_env):
    with FakeHub({}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        rc, out = dry_run(tmp_path, base_model="acme/missing")
    assert rc != 0 and "could not fetch config.json of 'acme/missing'" in out, out[-3000:]


def test_wrong_eos_of_a_hub_model_is_caught_before_download(tmp_path, hub_env):
    tok_cfg = {
        "eos_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
        "added_tokens_decoder": {"0": {"content": "<|endoftext|>", "special": True},
                                 "1": {"content": "<|im_start|>", "special": True},
                                 "2": {"content": "<|im_end|>", "special": True}},
    }
    with FakeHub({"acme/yi-like": files({**LLAMA, "eos_token_id": 0}, tok_cfg)}) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        rc, out = dry_run(tmp_path, base_model="acme/yi-like")
        assert rc != 0 and "model.eos_token" in out and "'<|im_end|>'" in out, out[-3000:]
        rc, out = dry_run(tmp_path / "fixed", base_model="acme/yi-like", model={"eos_token": "<|im_end|>"})
        assert rc == 0, out[-3000:]


def test_trust_remote_code_is_refused_with_a_message(tmp_path):
    rc, out = dry_run(tmp_path, trust_remote_code=True)
    assert rc != 0 and "trust_remote_code: true is not supported" in out, out[-3000:]
