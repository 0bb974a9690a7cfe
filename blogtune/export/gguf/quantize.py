"""Output types per tensor, and the numpy conversion into that type.

llama.cpp's rules (notes §3): norms, biases, rope factors and every 1-D tensor stay F32 whatever
the output type; a row length that is not a multiple of the quant block falls back to F16.
For q4_0/q4_1 the embedding and output matrices get Q8_0 (as llama.cpp's own mixes do): 4-bit
embeddings cost a lot of quality for little size.
"""

from __future__ import annotations

from collections.abc import Sequence

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

OUTTYPES: dict[str, Q] = {
    "f32": Q.F32,
    "f16": Q.F16,
    "bf16": Q.BF16,
    "q8_0": Q.Q8_0,
    "q4_0": Q.Q4_0,
    "q4_1": Q.Q4_1,
    "q5_0": Q.Q5_0,
    "q5_1": Q.Q5_1,
}
FILE_TYPES: dict[str, gguf.LlamaFileType] = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    "q5_1": gguf.LlamaFileType.MOSTLY_Q5_1,
}
_KEEP_F32_SUFFIXES = (
    "_norm.weight",
    ".bias",
    "rope_freqs.weight",
    "rope_factors_long.weight",
    "rope_factors_short.weight",
)
_QUANTIZED = {Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}
_LOW_BIT = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1}
_EMBEDDINGS = ("token_embd.weight", "output.weight")
F16_MAX = 65504.0


def parse_outtype(outtype: str) -> Q:
    try:
        return OUTTYPES[outtype.lower()]
    except KeyError:
        raise ValueError(
            f"outtype {outtype!r} is not supported; choose one of {', '.join(OUTTYPES)}"
        ) from None


def tensor_type(gguf_name: str, shape: Sequence[int], outtype: str) -> Q:
    """The GGML type one tensor gets in a file of `outtype` (shape in HF order)."""
    want = parse_outtype(outtype)
    if len(shape) < 2 or gguf_name.endswith(_KEEP_F32_SUFFIXES):
        return Q.F32
    if want in _LOW_BIT and gguf_name in _EMBEDDINGS:
        want = Q.Q8_0
    if want in _QUANTIZED:
        block, _ = gguf.GGML_QUANT_SIZES[want]
        if shape[-1] % block:
            return Q.F16
    return want


def nbytes(shape: Sequence[int], qtype: Q) -> int:
    """Bytes the tensor takes in the file, before alignment padding."""
    byte_shape = (
        gguf.quant_shape_to_byte_shape(tuple(shape), qtype) if qtype in _QUANTIZED | {Q.BF16} else None
    )
    if byte_shape is not None:
        return int(np.prod(byte_shape, dtype=np.int64))
    itemsize = {Q.F32: 4, Q.F16: 2}[qtype]
    return int(np.prod(shape, dtype=np.int64)) * itemsize


def convert(data: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 data -> the array whose bytes go into the file."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == Q.F32:
        return data
    if qtype == Q.F16:
        # saturate instead of writing inf: rare, but one inf weight poisons every activation
        if data.size and float(np.abs(data).max()) > F16_MAX:
            data = np.clip(data, -F16_MAX, F16_MAX)
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)
