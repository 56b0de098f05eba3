"""Fine-tuning: data (formats, checks, clean/dedup/balance/split), recipes, training and export.

Submodules are imported where used so that `import ragtune` and the CLI stay fast; the heavy
libraries (transformers, datasketch, scikit-learn) load only inside the functions that need them.
"""
