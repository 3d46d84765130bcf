"""Text corpora: the packaged default, local files and hub datasets; the fixed train/test split; windows."""
