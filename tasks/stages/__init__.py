"""The pipeline's stages as plain functions: read input artifacts, call the library, write one artifact."""
