"""Data: labeled task splits, unlabeled transfer corpora, and the offline sample data."""
