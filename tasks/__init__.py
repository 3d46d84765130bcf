"""Pure library: plain functions on tensors and paths. Nothing here imports prefect, yaml or dvc.

    config.py, errors.py   params.yaml's sections (parsed by flows/) and the input-error type
    io/                    artifacts on disk, model sources, the text corpus
    engine/                the sequential layer-by-layer pass pruning and GPTQ share
    pruning/               sparsity patterns and masks, the pruning methods, OWL
    quantization/          the integer grid (RTN), GPTQ
    formats/               packed formats, packed artifacts, the packed model, the serving export
    evaluation/            perplexity on the held-out split
    reports/               metrics, tables and plots
    stages/                one function per pipeline stage: read artifacts, call the above, write one
"""
