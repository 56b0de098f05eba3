"""Ingest: loaders (one function per format), cleaning, chunking and the pipeline."""
