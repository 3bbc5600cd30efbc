"""Embeddings of an archive and what is built on them: the embedding store (:mod:`nfaudio.embed.store`, parquet
shards of per-window embeddings), a vector index and search, shallow classifiers (probes) on frozen embeddings,
and active learning.
"""

from nfaudio.embed.store import KEY_COLUMNS, EmbeddingStore, StoreConflictError, StoreError, StoreWriter, open_store

__all__ = ["KEY_COLUMNS", "EmbeddingStore", "StoreConflictError", "StoreError", "StoreWriter", "open_store"]
