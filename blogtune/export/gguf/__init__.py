"""HF safetensors folder (what mlx_lm.fuse writes) -> GGUF for llama.cpp and Ollama, in pure Python.

Public API:
    SUPPORTED_ARCHITECTURES        HF model_type values we can export
    check_exportable(config)       -> GGUF arch name, or UnsupportedArchitectureError (call before training)
    export_gguf(model_dir, out_path, outtype="f16", name=None) -> ExportReport
"""

from blogtune.export.gguf.architectures import (
    SUPPORTED_ARCHITECTURES,
    ExportError,
    UnsupportedArchitectureError,
    check_exportable,
)
from blogtune.export.gguf.quantize import OUTTYPES
from blogtune.export.gguf.writer import ExportReport, export_gguf

__all__ = [
    "OUTTYPES",
    "SUPPORTED_ARCHITECTURES",
    "ExportError",
    "ExportReport",
    "UnsupportedArchitectureError",
    "check_exportable",
    "export_gguf",
]
