"""Per-model answering profiles, from measurements kept as data in registry.json: which installed
chat model answers best (the default for every command that answers), and whether the grounded
prompt's worked example helps a model (it helps some and makes others copy the wrong source)."""

from __future__ import annotations

import logging

from .registry import find_model, registered_models

log = logging.getLogger(__name__)
FALLBACK_MODEL = "SmolLM2-135M-Instruct"


def grounded_example(model: str) -> bool:
    """Whether to show `model` the grounded protocol's worked example (registry data; on for models
    never measured, where the example is the safer bet for the output shape)."""
    spec = find_model(str(model)) if model else None
    return True if spec is None or spec.grounded_example is None else spec.grounded_example


def answer_prompt(model: str) -> str | None:
    """The prompt protocol measured best for `model` (None: not measured, the runtime's default)."""
    spec = find_model(str(model)) if model else None
    return spec.answer_prompt if spec is not None else None


def best_chat_model() -> tuple[str, str]:
    """(name, why) of the installed chat model with the best measured answer quality."""
    measured = [s for s in registered_models() if s.kind == "chat" and s.answer_quality is not None]
    ranked = sorted(measured, key=lambda s: s.answer_quality, reverse=True)
    for spec in ranked:
        if spec.installed:
            why = f"the best installed chat model by measured answers ({spec.answer_quality:.2f} right and cited"
            others = [f"{s.answer_quality:.2f} for {s.name}" for s in ranked if s is not spec and s.installed]
            better = [s.name for s in ranked[:ranked.index(spec)]]
            why += (f" vs {', '.join(others)})" if others else ")")
            if better:
                why += f"; {', '.join(better)} answers better: install it"
            return spec.name, why
    return FALLBACK_MODEL, "no measured chat model is installed; using the smallest packaged one"


def answer_model(model: str | None) -> tuple[str, str | None]:
    """The model to answer with: the one named, else the best installed one, with a one-line note
    saying which and why (None when the user named it)."""
    if model:
        return model, None
    name, why = best_chat_model()
    return name, f"answering with {name}, {why}; --model picks another"
