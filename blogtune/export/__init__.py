"""Export stage (rules/export.smk: export_gguf, modelfile, ollama): fused model -> GGUF, Modelfile, Ollama.

Public API:
    export_gguf, check_exportable, UnsupportedArchitectureError   the GGUF writer (gguf/)
    write_modelfile                                              Ollama Modelfile from the chat family (modelfile)
    deploy, OllamaUnavailable, SmokeTestError                    create the model in Ollama, smoke test (ollama)
"""

from blogtune.export.gguf import UnsupportedArchitectureError, check_exportable, export_gguf
from blogtune.export.modelfile import write_modelfile
from blogtune.export.ollama import OllamaUnavailable, SmokeTestError, deploy

__all__ = [
    "OllamaUnavailable",
    "SmokeTestError",
    "UnsupportedArchitectureError",
    "check_exportable",
    "deploy",
    "export_gguf",
    "write_modelfile",
]
