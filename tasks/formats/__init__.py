"""Packed weight formats, packed artifacts, the packed model and the compressed-tensors export."""
