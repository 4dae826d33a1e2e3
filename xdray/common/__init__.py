"""Plumbing every step shares: files, MLflow, HF loading, latency, memory."""
