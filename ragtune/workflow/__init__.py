"""Workflows that drive several capabilities (raft, finetune, generate, evaluate) to answer one question."""
