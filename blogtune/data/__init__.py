"""Data stage (rules/data.smk: chunk, split): blog posts -> chunks -> article-grouped splits.

Public API:
    discover_posts, select_from_index, load_articles, Reject   which posts, read and checked (posts)
    chunk_article                                               one post's text -> chunks (chunking)
    SPLITS, assign_splits, cross_split_duplicates, split_stats  the stable split by article (splitting)
"""

from blogtune.data.chunking import chunk_article
from blogtune.data.posts import DEFAULT_MAX_BYTES, Reject, discover_posts, load_articles, select_from_index
from blogtune.data.splitting import SPLITS, assign_splits, cross_split_duplicates, split_stats

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SPLITS",
    "Reject",
    "assign_splits",
    "chunk_article",
    "cross_split_duplicates",
    "discover_posts",
    "load_articles",
    "select_from_index",
    "split_stats",
]
