"""RAFT (retrieval-augmented fine-tuning): build question + oracle + distractors -> quoted chain-of-thought
examples from a knowledge base, and answer with a RAFT-trained model the same way at inference.

Modules: prompt (the one RAFT prompt shared by builder and inference, quote checks), windows (documents
re-cut by target-model tokens), teacher (registry + teacher prompts), questions (question files, dedup,
answerability), context (oracle + distractors), builder (resumable build), cli.
Nothing heavy is imported here.
"""

from .teacher import make_teacher, register_teacher

__all__ = ["make_teacher", "register_teacher"]
