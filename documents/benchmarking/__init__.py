"""The heavier benchmarks of the documents app (ingestion, retrieval quality, search at scale).

`documents/benchmarks.py` registers them with `config.bench`; the code lives here to keep that file short.
"""
