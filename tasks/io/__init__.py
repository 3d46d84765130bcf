"""Artifacts on disk (atomic writes, metadata, digests) and model sources."""
