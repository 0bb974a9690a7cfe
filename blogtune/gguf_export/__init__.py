"""HF safetensors folder (what mlx_lm.fuse writes) -> GGUF for llama.cpp and Ollama, in pure Python.

Public API:
    SUPPORTED_ARCHITECTURES        HF model_type values we can export
    check_exportable(config)       -> GGUF arch name, or UnsupportedArchitectureError (call before training)
    export_gguf(model_dir, out_path, outtype="f16", name=None) -> ExportReport
"""

from blogtune.gguf_export.architectures import (
    SUPPORTED_ARCHITECTURES,
    ExportError,
    UnsupportedArchitectureError,
    check_exportable,
)
from blogtune.gguf_export.quantize import OUTTYPES
from blogtune.gguf_export.writer import ExportReport, export_gguf

__all__ = [
    "OUTTYPES",
    "SUPPORTED_ARCHITECTURES",
    "ExportError",
    "ExportReport",
    "UnsupportedArchitectureError",
    "check_exportable",
    "export_gguf",
]
