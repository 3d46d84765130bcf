"""The sequential layer-by-layer pass over a decoder-only model, shared by pruning and GPTQ."""
