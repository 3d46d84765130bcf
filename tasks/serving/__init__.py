"""Packed artifacts put to use: `load_packed` (a working model over the kernels) and the
compressed-tensors export that vLLM and transformers load."""
