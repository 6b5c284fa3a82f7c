"""Benchmark evaluation with the published protocol (docs/evaluation.md): scorers, benchmark
definitions, the engine.

`scoring` is pure Python (no JAX); `sources` reads local files or the hub; `tasks` defines
each benchmark's schema, prompt, shots and generation settings (`drop_shots` holds DROP's
fixed shots); `runner` batches prompts through `hrm_jax.generate` with a budget per row and
aggregates the scores. experiments/eval.py is the command.
"""

from hrm_jax.eval import drop_shots, runner, scoring, sources, tasks

__all__ = ["drop_shots", "runner", "scoring", "sources", "tasks"]
