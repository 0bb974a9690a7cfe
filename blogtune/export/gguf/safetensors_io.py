"""Read safetensors folders one tensor at a time through a memory map.

The format is an 8-byte header length, a JSON header, then raw little-endian data, so numpy's
memmap reads any tensor lazily without torch. bf16 (which numpy lacks) is widened to float32
by shifting the raw 16 bits into the high half of a uint32.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_NUMPY_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "U32": np.uint32,
    "BOOL": np.bool_,
}
_ITEMSIZE = {"BF16": 2, **{k: np.dtype(v).itemsize for k, v in _NUMPY_DTYPES.items()}}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: enough to read it later without keeping it in memory."""

    name: str
    file: Path
    dtype: str  # safetensors dtype string: F32, F16, BF16, ...
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in the file
    nbytes: int

    def load_f32(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows [start:stop) (all by default) as a fresh float32 array, read through a memory map."""
        if self.dtype not in _ITEMSIZE:
            raise ValueError(f"{self.name}: unsupported safetensors dtype {self.dtype}")
        rows = self.shape[0] if self.shape else 1
        start, stop = start or 0, rows if stop is None else stop
        row_count = int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1
        count = (stop - start) * row_count
        shape = (stop - start, *self.shape[1:]) if self.shape else ()
        if count == 0:
            return np.zeros(shape, dtype=np.float32)
        offset = self.offset + start * row_count * _ITEMSIZE[self.dtype]
        if self.dtype == "BF16":
            raw = np.memmap(self.file, dtype="<u2", mode="r", offset=offset, shape=(count,))
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            dtype = np.dtype(_NUMPY_DTYPES[self.dtype]).newbyteorder("<")
            raw = np.memmap(self.file, dtype=dtype, mode="r", offset=offset, shape=(count,))
            out = raw.astype(np.float32)
        del raw  # unmaps: only the float32 copy stays alive
        return out.reshape(shape)


def read_header(path: Path) -> dict:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 * 1024 * 1024:
            raise ValueError(f"{path.name}: implausible safetensors header length {length}")
        return json.loads(fh.read(length))


def index_file(path: Path) -> list[TensorRef]:
    header = read_header(path)
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
    base = 8 + length
    refs = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        refs.append(TensorRef(name, path, info["dtype"], shape, base + start, end - start))
    return refs


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model folder, in the index's order when there is one."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (model_dir / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{model_dir}: index lists missing shard(s) {missing}")
        return [model_dir / f for f in files]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    return files


def index_model(model_dir: Path) -> dict[str, TensorRef]:
    """Every tensor of the model by name (a name in two shards is an error)."""
    refs: dict[str, TensorRef] = {}
    for path in weight_files(model_dir):
        for ref in index_file(path):
            if ref.name in refs:
                raise ValueError(
                    f"tensor {ref.name} appears in both {refs[ref.name].file.name} and {path.name}"
                )
            refs[ref.name] = ref
    return refs


def iter_refs(model_dir: Path) -> Iterator[TensorRef]:
    yield from index_model(model_dir).values()
