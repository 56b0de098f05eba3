"""`eval qa --ray` and `compare --ray`: questions fanned out to model replicas on a Ray cluster.

Each replica is a Ray actor that builds the strategy exactly as a local run does (evaluate/plan.py:
the generator, the knowledge base opened read-only, `make_strategy`) and answers examples. The driver
keeps everything else: `run_eval` scores every answer and stores it in the same runs database as it
arrives, so a killed run resumes where it stopped and `compare` reads Ray runs like local ones. A
replica's answers equal a local run's for the same model and settings (greedy decoding).

On a real cluster every node needs ragtune, the models and the knowledge base at the same path.
"""

from __future__ import annotations

import itertools
import logging
import threading

log = logging.getLogger(__name__)


class StrategyReplica:
    """Built inside a Ray actor: one strategy over its own generator (and the KB, read-only)."""

    def __init__(self, plan, name: str, model: str, max_new_tokens: int, style):
        from ..kb import KnowledgeBase
        from .plan import _generator
        from .strategies import STRATEGIES, make_strategy

        self.kb = KnowledgeBase.open(plan.kb, readonly=True, threads=plan.threads) if STRATEGIES[name][1] else None
        if self.kb is not None:
            self.kb.embedder.encode_query("warm up")
        self.strategy = make_strategy(name, _generator(plan, model), kb=self.kb, k=plan.k,
                                      max_new_tokens=max_new_tokens, style=style, prompt=plan.prompt)
        # the actor takes several calls at once; a strategy that is not safe to share answers one at a time
        self._serial = None if getattr(self.strategy, "concurrent_safe", False) else threading.Lock()

    def answer(self, example) -> dict:
        if self._serial is None:
            return self.strategy.answer(example)
        with self._serial:
            return self.strategy.answer(example)

    def describe(self) -> dict:
        return {"name": self.strategy.name, "uses_retrieval": self.strategy.uses_retrieval,
                "max_new_tokens": self.strategy.max_new_tokens}


class RemoteStrategy:
    """What run_eval needs of a strategy, answered by `workers` replicas in turn (thread-safe)."""

    concurrent_safe = True  # each replica serialises what its strategy cannot share

    def __init__(self, plan, name: str, model: str, max_new_tokens: int, style, *, workers: int):
        import dataclasses
        from pathlib import Path

        import ray

        # replicas run elsewhere (another working directory, another node): paths travel absolute
        plan = dataclasses.replace(plan, kb=Path(plan.kb).resolve() if plan.kb else None,
                                   dataset=Path(plan.dataset).resolve())
        if Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())
        cpus = min(1.0, float(ray.cluster_resources().get("CPU", workers)) / workers)
        # a replica answers as many questions at once as a local run (llama.cpp slots) when it may
        actor = ray.remote(num_cpus=cpus, max_concurrency=max(1, plan.concurrency))(StrategyReplica)
        self.replicas = [actor.remote(plan, name, model, max_new_tokens, style) for _ in range(workers)]
        facts = ray.get(self.replicas[0].describe.remote())  # waits for the first model load: errors surface here
        ray.get([r.describe.remote() for r in self.replicas[1:]])
        self.name, self.uses_retrieval = facts["name"], facts["uses_retrieval"]
        self.max_new_tokens = facts["max_new_tokens"]
        self._turn, self._lock = itertools.cycle(self.replicas), threading.Lock()
        log.info("%s: %d replicas on Ray", name, workers)

    def answer(self, example) -> dict:
        import ray

        with self._lock:
            replica = next(self._turn)
        return ray.get(replica.answer.remote(example))

    def close(self) -> None:
        import ray

        for replica in self.replicas:
            ray.kill(replica)
