"""Pure library: model loading, calibration, pruning, quantization, packing, evaluation.

Plain functions on tensors and paths. Nothing here imports prefect, yaml or dvc.
"""
