"""Real servers for the teacher's tests and benchmark (started on 127.0.0.1, stopped after).

- `build_f16_gguf`: the embedded model as an f16 GGUF written by blogtune's own exporter (the
  wheel's Q4_1 file crashes llama.cpp on this CPU at the first generated token).
- `LlamaServer`: llama-cpp-python's OpenAI-compatible server on that file.
- `FlakyServer`: a tiny http.server that answers a few valid chat completions, then misbehaves
  (sleeps past the client's timeout, answers 500, malformed JSON, or closes mid-answer).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from blogtune.model.base_model import embedded_gguf_path, import_gguf_to_hf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_f16_gguf(work: Path) -> Path:
    from blogtune.export.gguf import export_gguf

    work = Path(work)
    out = work / "embedded-f16.gguf"
    if not out.is_file():
        hf = import_gguf_to_hf(embedded_gguf_path(), work / "embedded_hf")
        export_gguf(hf, out, "f16")
    return out


class LlamaServer:
    """`python -m llama_cpp.server` on `gguf`; `url` is its /v1 base URL."""

    def __init__(self, gguf: Path, threads: int = 2, n_ctx: int = 4096, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                    "--seed", "0", "--verbose", "False"]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LlamaServer:
        out = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode} (log: {self.log})")
            try:
                urllib.request.urlopen(f"{self.url}/models", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("llama_cpp.server did not start within 120 s")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def completion(text: str, tokens: int = 5) -> bytes:
    return json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": "flaky",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
    }).encode()


class FlakyServer:
    """Answers `good` requests with `answer`, then fails every request in the way `mode` names:
    timeout | status500 | malformed | disconnect. `requests` counts what it received."""

    def __init__(self, mode: str, good: int = 0, answer: str = "Q: What?\nA: Nothing.", sleep_s: float = 5.0):
        self.mode, self.good, self.answer, self.sleep_s = mode, good, answer, sleep_s
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    server.requests += 1
                    n = server.requests
                if n <= server.good:
                    return self._send(200, completion(server.answer))
                if server.mode == "timeout":
                    time.sleep(server.sleep_s)
                    return self._send(200, completion(server.answer))
                if server.mode == "status500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if server.mode == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                if server.mode == "disconnect":
                    body = completion(server.answer)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True

            def _send(self, status: int, body: bytes):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FlakyServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
