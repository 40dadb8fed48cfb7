"""Helpers for tests and benchmarks of aniso and of code built on it (like ``zarr.testing``):
synthetic paired embeddings with a planted, known modality gap."""
