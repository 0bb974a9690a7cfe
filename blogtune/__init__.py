"""blogtune: turn a folder of markdown posts into a local LLM that knows them."""

__version__ = "0.1.0"
