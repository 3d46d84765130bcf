"""Artifacts on disk (atomic writes, metadata, digests), model sources and the text corpus."""
