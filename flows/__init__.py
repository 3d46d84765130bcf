"""Prefect layer: params.yaml parsing, @flow/@task shells, CLI, deployments.

The only code that imports prefect, yaml or dvc.
"""
