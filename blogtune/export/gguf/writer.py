"""Streaming HF safetensors folder -> GGUF file.

All tensor infos are declared first (their sizes are known from shapes alone), then each tensor is
read through the memory map in blocks of whole rows (whole heads for permuted q/k), transformed,
converted and written before the next block is read. Peak memory is a few copies of one ~16 MB
block plus the Python/transformers baseline, whatever the model size.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

from blogtune.export.gguf.architectures import (
    ExportError,
    TensorPlan,
    apply_transform,
    plan_tensors,
    rows_per_head,
    spec_for,
    text_config,
)
from blogtune.export.gguf.quantize import FILE_TYPES, convert, nbytes, parse_outtype, tensor_type
from blogtune.export.gguf.safetensors_io import TensorRef, index_model
from blogtune.export.gguf.vocab import add_to_writer, load_vocab
from blogtune.io_utils import atomic_path

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    arch: str
    outtype: str
    n_tensors: int
    bytes: int
    seconds: float
    pre_tokenizer: str
    pre_source: str = ""
    path: Path | None = None
    tensor_types: dict[str, int] = field(default_factory=dict)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        """What the export decided, for export.json (and from there the run's metrics.json)."""
        return {
            "arch": self.arch, "outtype": self.outtype, "tensors": self.n_tensors, "bytes": self.bytes,
            "seconds": round(self.seconds, 3), "pre_tokenizer": self.pre_tokenizer,
            "pre_tokenizer_rule": self.pre_source, "tensor_types": self.tensor_types,
        }


def load_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir} has no config.json (not an HF-format model folder)")
    return json.loads(path.read_text(encoding="utf-8"))


_BLOCK = re.compile(r"^blk\.(\d+)\.")


def _order(plan: TensorPlan) -> tuple[int, int, str]:
    """token_embd and rope tensors first, blocks in order, output_norm/output last (like llama.cpp)."""
    m = _BLOCK.match(plan.gguf_name)
    if m:
        return (1, int(m.group(1)), plan.gguf_name)
    last = plan.gguf_name.startswith(("output_norm", "output."))
    return (2 if last else 0, 0, plan.gguf_name)


def export_gguf(
    model_dir: Path,
    out_path: Path,
    outtype: str = "f16",
    name: str | None = None,
    *,
    pre_tokenizer: str | None = None,
) -> ExportReport:
    """Write `model_dir` (HF safetensors + tokenizer files, e.g. mlx_lm.fuse output) as one GGUF.

    `pre_tokenizer` overrides the detected llama.cpp pre-tokenizer name (BPE vocabularies only).
    """
    start = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    outtype = outtype.lower()
    parse_outtype(outtype)
    raw_config = load_config(model_dir)
    spec = spec_for(raw_config)
    config = text_config(raw_config)
    refs = index_model(model_dir)
    plans = sorted(plan_tensors(spec, config, {n: r.shape for n, r in refs.items()}), key=_order)
    n_vocab = next(p.shape[0] for p in plans if p.gguf_name == "token_embd.weight")
    for p in plans:
        if p.gguf_name == "output.weight" and p.shape[0] != n_vocab:
            raise ExportError(f"lm_head has {p.shape[0]} rows but the embedding has {n_vocab}")
    config = {**config, "vocab_size": n_vocab}
    vocab = load_vocab(model_dir, n_vocab, str(config["model_type"]), pre_tokenizer)
    types = [tensor_type(p.gguf_name, p.shape, outtype) for p in plans]
    log.info(
        "exporting %s (%s, %d tensors) to %s as %s",
        model_dir.name,
        spec.name,
        len(plans),
        out_path.name,
        outtype,
    )

    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, spec.name)
        try:
            _write_metadata(writer, name or model_dir.name, outtype, types)
            spec.write_hparams(config, writer)
            add_to_writer(vocab, writer)
            for plan, qtype in zip(plans, types, strict=True):
                dtype = np.float16 if qtype == Q.F16 else np.float32
                raw = None if qtype in (Q.F32, Q.F16) else qtype
                writer.add_tensor_info(
                    plan.gguf_name, plan.shape, dtype, nbytes(plan.shape, qtype), raw_dtype=raw
                )
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            # Tensor data is written here, chunk by chunk, at the offsets write_ti_data_to_file
            # declared (each tensor padded to the alignment), so no whole tensor is ever held.
            fout = writer.fout[0]
            writer.write_padding(fout, fout.tell())
            step = max(1, len(plans) // 10)
            for i, (plan, qtype) in enumerate(zip(plans, types, strict=True), 1):
                written = 0
                for chunk in _converted_chunks(plan, qtype, refs, config):
                    chunk.tofile(fout)
                    written += chunk.nbytes
                if written != nbytes(plan.shape, qtype):
                    raise ExportError(
                        f"{plan.gguf_name}: wrote {written} bytes, declared {nbytes(plan.shape, qtype)}"
                    )
                writer.write_padding(fout, written)
                if i % step == 0 or i == len(plans):
                    log.info("  %d/%d tensors written", i, len(plans))
        finally:
            writer.close()
        size = tmp.stat().st_size

    seconds = time.perf_counter() - start
    counts = Counter(q.name for q in types)
    report = ExportReport(
        spec.name, outtype, len(plans), size, seconds, vocab.pre, vocab.pre_source, out_path, dict(counts)
    )
    log.info(
        "wrote %s: %.1f MB in %.1f s (%.0f MB/s), pre-tokenizer %s (%s), types %s",
        out_path,
        size / 1e6,
        seconds,
        report.mb_per_s,
        vocab.pre,
        vocab.pre_source,
        dict(counts),
    )
    return report


def _write_metadata(writer: gguf.GGUFWriter, name: str, outtype: str, types: list[Q]) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(int(FILE_TYPES[outtype]))
    if any(q not in (Q.F32, Q.F16, Q.BF16) for q in types):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


CHUNK_VALUES = 1 << 22  # ~16 MB of float32 per chunk


def _converted_chunks(plan: TensorPlan, qtype: Q, refs: dict, config: dict) -> Iterator[np.ndarray]:
    """The tensor's file bytes as a sequence of arrays, each from a block of whole rows."""
    if plan.generated is not None or len(plan.shape) < 2:
        blocks: Iterator[np.ndarray] = iter(
            [plan.generated if plan.generated is not None else refs[plan.hf_name].load_f32()]
        )
    else:
        blocks = _row_blocks(refs[plan.hf_name], rows_per_head(plan, config))
    for data in blocks:
        data = apply_transform(plan, data, config)
        if not np.isfinite(data).all():
            raise ExportError(
                f"tensor {plan.hf_name or plan.gguf_name} contains NaN/Inf values: the fused weights are broken "
                "(diverged training or a failed fuse); refusing to export"
            )
        yield convert(data, qtype)


def _row_blocks(ref: TensorRef, unit: int) -> Iterator[np.ndarray]:
    rows = ref.shape[0]
    row_values = int(np.prod(ref.shape[1:], dtype=np.int64))
    step = max(unit, (CHUNK_VALUES // max(row_values, 1)) // unit * unit)
    for start in range(0, rows, step):
        yield ref.load_f32(start, min(rows, start + step))
