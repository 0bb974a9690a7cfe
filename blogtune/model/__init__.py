"""Model stage (rules/model.smk: import_base, convert, format): base model -> MLX model, chunks -> samples.

Public API:
    resolve_base_model, BaseModelSource, BaseModelError   what `base_model:` names (base_model)
    import_gguf_to_hf                                      the embedded GGUF -> HF folder (base_model)
    plan_conversion, convert_to_mlx, accelerator           HF -> MLX folder (convert)
    rope_overrides                                         rope keys mlx-lm would lose (convert)
    ChatFamily, load_family, detect_family                 the model's chat template (chat_format)
    format_splits, validate_prompts, FormatError           chunks -> chat samples (formatting)
"""

from blogtune.model.base_model import BaseModelError, BaseModelSource, import_gguf_to_hf, resolve_base_model
from blogtune.model.chat_format import ChatFamily, detect_family, load_family
from blogtune.model.convert import accelerator, convert_to_mlx, plan_conversion, rope_overrides
from blogtune.model.formatting import FormatError, format_splits, validate_prompts

__all__ = [
    "BaseModelError",
    "BaseModelSource",
    "ChatFamily",
    "FormatError",
    "accelerator",
    "convert_to_mlx",
    "detect_family",
    "format_splits",
    "import_gguf_to_hf",
    "load_family",
    "plan_conversion",
    "resolve_base_model",
    "rope_overrides",
    "validate_prompts",
]
