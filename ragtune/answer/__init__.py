"""Grounded answers: retrieve, build a budgeted prompt, generate, verify citations."""
