"""Benchmarks of jaxembed against the seed notebook's PyTorch pipeline (see README.md)."""
