"""prunepipe: compress causal language models without retraining.

    model → calibrate → prune → quantize → pack → evaluate → benchmark

The library lives in `tasks/` (pure functions) and `kernels/` (Triton); `flows/` holds the
Prefect flows and the `prunepipe` command line.
"""

from tasks.serving.packed_model import load_packed

__all__ = ["load_packed"]
__version__ = "0.1.0"
