"""Sparsity patterns and masks, the pruning methods (magnitude, Wanda, SparseGPT, ADMM) and OWL."""
