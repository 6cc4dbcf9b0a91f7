"""Data: downloads and the data sets scratchlm knows, and datasets for training."""
