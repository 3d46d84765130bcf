"""Packed weight formats and packed artifacts on disk."""
