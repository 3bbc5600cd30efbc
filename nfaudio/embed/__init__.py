"""Embeddings of an archive and what is built on them: the embedding store (:mod:`nfaudio.embed.store`, parquet
shards of per-window embeddings), a vector index and search, shallow classifiers (probes) on frozen embeddings,
and active learning.

Making a store: ``nfaudio embed MODEL INPUTS --out DIR`` or :meth:`Predictor.embed_to_dir`
(:func:`nfaudio.embed.run.run_embedding`, the resumable run); one query's vector:
:func:`nfaudio.embed.query.embed_query`.
Those two modules load the model stack (torch), so they are not imported here: reading a store needs only pyarrow.
"""

from nfaudio.embed.store import KEY_COLUMNS, EmbeddingStore, StoreConflictError, StoreError, StoreWriter, open_store

__all__ = ["KEY_COLUMNS", "EmbeddingStore", "StoreConflictError", "StoreError", "StoreWriter", "open_store"]
