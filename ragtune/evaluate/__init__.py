"""Evaluation: retrieval metrics and BEIR-format benchmarks."""
