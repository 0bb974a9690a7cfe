"""Data stage (rules/data.smk: chunk, split): blog posts -> chunks -> article-grouped splits.

Public API:
    discover_posts, select_from_index, load_articles, Reject   which posts, read and checked (posts)
    clean_markdown, article_language                           one post's text, cleaned (cleaning)
    remove_boilerplate, removal_table                          blocks repeated across posts (boilerplate)
    chunk_article, join_chunks                                 one post's text -> chunks (chunking)
    SPLITS, assign_splits, cross_split_duplicates, split_stats  the stable split by article (splitting)

Names load lazily (PEP 562), so reading a post never imports the chunker or markdown-it.
"""

from blogtune.lazy import lazy_names

_HOME = {
    "DEFAULT_MAX_BYTES": "posts",
    "Reject": "posts",
    "discover_posts": "posts",
    "load_articles": "posts",
    "select_from_index": "posts",
    "article_language": "cleaning",
    "clean_markdown": "cleaning",
    "remove_boilerplate": "boilerplate",
    "removal_table": "boilerplate",
    "chunk_article": "chunking",
    "join_chunks": "chunking",
    "SPLITS": "splitting",
    "assign_splits": "splitting",
    "cross_split_duplicates": "splitting",
    "split_stats": "splitting",
}
__all__ = sorted(_HOME)

__getattr__ = lazy_names(__name__, _HOME)
