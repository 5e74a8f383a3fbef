"""Benchmarks (`cli.py bench train|recommend`) and the reference-style loop they compare against."""
