"""Benchmark evaluation (REFERENCE section 6): scorers, benchmark definitions, the engine.

`scoring` is pure Python (no JAX); `sources` reads local files or the hub; `tasks` defines
each benchmark's schema, prompt, shots and generation settings; `runner` batches prompts
through `hrm_jax.generate` and aggregates the scores. experiments/eval.py is the command.
"""

from hrm_jax.eval import runner, scoring, sources, tasks

__all__ = ["runner", "scoring", "sources", "tasks"]
