"""Retrieval over a knowledge base."""
