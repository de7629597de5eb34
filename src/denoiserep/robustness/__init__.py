"""Robustness: image corruptions (ImageNet-C), feature noise and quantization, their
evaluation across arms and its summary (mCA, mCE, tables and plots)."""
