"""Atomic outputs: a failure leaves the previous result untouched and no temp files."""

import stat

import pytest

from blogtune.io_utils import atomic_dir, atomic_open, atomic_path, atomic_write_jsonl, read_jsonl


def test_atomic_open_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write("half-written")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_outputs_have_normal_permissions(tmp_path):
    atomic_write_jsonl(tmp_path / "a.jsonl", [{"x": 1}, {"y": "é"}])
    assert list(read_jsonl(tmp_path / "a.jsonl")) == [{"x": 1}, {"y": "é"}]
    assert stat.S_IMODE((tmp_path / "a.jsonl").stat().st_mode) & 0o044  # readable by others
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) & 0o055
    with atomic_path(tmp_path / "m.gguf") as p:
        p.write_bytes(b"GGUF")
    assert stat.S_IMODE((tmp_path / "m.gguf").stat().st_mode) & 0o044
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "m.gguf") as p:
            p.write_bytes(b"half")
            raise OSError("disk full")
    assert (tmp_path / "m.gguf").read_bytes() == b"GGUF" and not list(tmp_path.glob(".m.gguf*"))


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "weights").write_text("v1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as d:
            (d / "weights").write_text("v2-partial")
            raise ValueError("boom")
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with atomic_dir(target) as d:
        (d / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
