"""Text generation backends behind one small protocol (local Hugging Face models, OpenAI-compatible HTTP)."""

from .base import Generation, Generator, make_generator

__all__ = ["Generation", "Generator", "make_generator"]
