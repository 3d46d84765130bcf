"""The integer grid (round to nearest, group quantizers), GPTQ, and the model-level quantizing pass."""
