"""Stage `teach`: train-split posts -> knowledge samples (Q&A, rewrites, teacher-free views).

A model trained on each fact once, as raw text, memorises it but cannot answer questions about it;
several forms of each fact plus short Q&A make it extractable (see
shared notes "knowledge-from-posts"). Modules, leaves first:

  sections   one post's chunks -> its sections (heading path, text, code blocks, inline code)
  views      teacher-free Q&A computed from the markdown (always on)
  prompts    versioned teacher prompts and the parser of their answers
  teachers   none | openai (any OpenAI-compatible endpoint) | local (mlx-lm in-process, batched)
  grounding  keep only pairs the source section supports; every drop has a reason
  cache      per-post teacher answers keyed by post content + teacher + prompt version
  stage      one shard of posts: ask (or reuse), filter, hold out, write
  mix        the training mix read by `format`
(Real servers for its tests live in blogtune.testing_servers.)
"""

from blogtune.lazy import lazy_names

# The public face; names load lazily (PEP 562) so `format` reading the mix imports no teacher.
_HOME = {
    "knowledge_samples": "mix",
    "weighted": "mix",
    "TeachSettings": "stage",
    "teach_shard": "stage",
    "merge": "stage",
    "TeachError": "teachers",
    "make_teacher": "teachers",
    "PostCache": "cache",
}
__all__ = sorted(_HOME)

__getattr__ = lazy_names(__name__, _HOME)
