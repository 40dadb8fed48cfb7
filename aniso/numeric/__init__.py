"""Numeric building blocks with no I/O: arrays and chunk sources, mergeable moments,
chunk-independent sampling, row-deterministic products and the fused affine kernel."""
