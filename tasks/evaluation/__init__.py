"""Perplexity on the held-out split (the WikiText-2 protocol), written as an artifact."""
