"""Packed artifacts put to use: `load_packed` (a working model over the kernels, or decoded once),
streamed generation from it, and the compressed-tensors export that vLLM and transformers load."""
