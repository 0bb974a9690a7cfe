"""blogtune.export.ollama against a small fake Ollama HTTP server on 127.0.0.1 (and a closed port)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from blogtune.export.ollama import OllamaUnavailable, check_server, deploy, smoke_check
from blogtune.model.chat_format import detect_family

REPO = Path(__file__).resolve().parents[1]


class FakeOllama(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.blobs: dict[str, bytes] = {}
        self.created: list[dict] = []
        self.chats: list[dict] = []
        self.uploads = 0
        self.reply = {"content": "This blog is about PostgreSQL.", "done_reason": "stop", "eval_count": 9}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeOllama

    def log_message(self, *args):  # keep test output quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _json(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/api/version":
            return self._json(200, {"version": "0.0.0-fake"})
        self._json(404, {"error": "not found"})

    def do_HEAD(self):
        digest = self.path.rsplit("/", 1)[-1]
        self.send_response(200 if digest in self.server.blobs else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self._body()
        if self.path.startswith("/api/blobs/"):
            digest = self.path.rsplit("/", 1)[-1]
            if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                return self._json(400, {"error": "digest mismatch"})
            self.server.blobs[digest] = body
            self.server.uploads += 1
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        req = json.loads(body or b"{}")
        if self.path == "/api/create":
            missing = [d for d in (req.get("files") or {}).values() if d not in self.server.blobs]
            if missing:
                return self._json(400, {"error": f"missing blobs {missing}"})
            self.server.created.append(req)
            return self._json(200, {"status": "success"})
        if self.path == "/api/chat":
            self.server.chats.append(req)
            r = self.server.reply
            return self._json(
                200,
                {
                    "model": req["model"],
                    "created_at": "2026-01-01T00:00:00Z",
                    "done": True,
                    "done_reason": r["done_reason"],
                    "eval_count": r["eval_count"],
                    "message": {"role": "assistant", "content": r["content"]},
                },
            )
        self._json(404, {"error": "not found"})


@pytest.fixture
def fake_ollama():
    server = FakeOllama()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def chatml(smollm2_tokenizer_obj):
    return detect_family(smollm2_tokenizer_obj)


@pytest.fixture
def gguf_file(tmp_path) -> Path:
    path = tmp_path / "blog.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block exits


def test_deploy_creates_model_and_passes_smoke(fake_ollama, chatml, gguf_file):
    result = deploy(
        gguf_file,
        "blogtune-test",
        chatml,
        host=fake_ollama.url,
        system=None,
        parameters={"temperature": 0.7, "num_ctx": 2048},
        smoke_prompt="What is this blog about?",
        max_tokens=64,
    )
    assert result.uploaded and result.smoke is not None and result.smoke.passed
    [req] = fake_ollama.created
    assert req["model"] == "blogtune-test"
    assert req["files"] == {"blog.gguf": result.digest}
    assert req["template"] == chatml.ollama_template()
    assert req["system"] == chatml.default_system
    assert req["parameters"]["stop"] == ["<|im_end|>", "<|im_start|>", "<|endoftext|>"]
    assert req["parameters"]["num_ctx"] == 2048
    [chat] = fake_ollama.chats
    assert chat["options"]["num_predict"] == 64
    assert result.as_dict()["smoke"]["passed"] is True


def test_existing_blob_is_not_uploaded_again(fake_ollama, chatml, gguf_file):
    deploy(gguf_file, "a", chatml, host=fake_ollama.url, smoke_prompt=None)
    second = deploy(gguf_file, "b", chatml, host=fake_ollama.url, smoke_prompt=None)
    assert fake_ollama.uploads == 1 and not second.uploaded


@pytest.mark.parametrize(
    "reply, problem",
    [
        ({"content": "blah " * 64, "done_reason": "length", "eval_count": 64}, "never stopped"),
        (
            {"content": "Sure!<|im_end|>\n<|im_start|>user\nmore", "done_reason": "stop", "eval_count": 12},
            "template tokens",
        ),
        ({"content": "", "done_reason": "stop", "eval_count": 0}, "empty"),
    ],
)
def test_smoke_detects_bad_replies(fake_ollama, chatml, gguf_file, reply, problem):
    fake_ollama.reply = reply
    result = deploy(gguf_file, "m", chatml, host=fake_ollama.url, smoke_prompt="Hi", max_tokens=64)
    assert not result.smoke.passed
    assert any(problem in p for p in result.smoke.problems)


def test_unreachable_server_is_one_clear_line(chatml, gguf_file):
    host = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(OllamaUnavailable) as err:
        deploy(gguf_file, "m", chatml, host=host)
    message = str(err.value)
    assert host in message and "\n" not in message and "ollama serve" in message
    with pytest.raises(OllamaUnavailable):
        check_server(host, timeout=1)


def test_script_exits_cleanly_without_server(tiny_llama, gguf_file, tmp_path):
    """scripts/ollama_create.py run by hand: no traceback, exit code 2, one error line naming the host."""
    import os
    import shutil

    from blogtune.testing import write_config

    host = f"http://127.0.0.1:{closed_port()}"
    work = tmp_path / "work"
    write_config(work, {"blog": {"dir": str(REPO / "sample_blog")}, "ollama": {"host": host}})
    results = work / "results/smollm2-135m-instruct"
    shutil.copytree(tiny_llama, results / "fused")
    (results / "gguf").mkdir(parents=True)
    shutil.copy(gguf_file, results / "gguf/blogtune-smollm2-135m-instruct.gguf")
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "ollama_create.py")],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"no Ollama server reachable at {host}" in proc.stderr
    assert not (results / "ollama/create.json").exists()


def test_smoke_check_token_limit(chatml):
    problems = smoke_check("ok", "stop", 64, 64, chatml)
    assert any("limit" in p for p in problems)
    assert smoke_check("A fine answer.", "stop", 10, 64, chatml) == []
