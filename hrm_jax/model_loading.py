"""Resolve a `--checkpoint` (native training checkpoint or Hugging Face directory) and its
tokenizer for inference; shared by experiments/generate.py and experiments/eval.py.

The tokenizer is the explicit one, else `tokenizer.json` in the checkpoint directory (Hugging
Face, or copied there by convert.py --from_hf), else the one of the training data named by the
checkpoint's saved config (the demo cache for data.source=demo, regenerated with the saved
settings if deleted, or data.path's metadata.json tokenizer_info).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from hrm_jax import checkpoint_layout, data, hf, native_weights, storage, tokenizer
from hrm_jax.config import ModelConfig
from hrm_jax.execution import Execution


def is_hf(path: str | os.PathLike) -> bool:
  """A Hugging Face directory has config.json at its top (a native checkpoint never does)."""
  return storage.path(storage.join(path, "config.json")).exists()


def load_model(checkpoint: str | os.PathLike, use_ema: bool = True
               ) -> tuple[ModelConfig, Execution, dict]:
  """(ModelConfig, Execution, {"params", "buffers"}) of a Hugging Face directory (float32)
  or native checkpoint (how its run executed: its dtype); `use_ema` picks a training
  checkpoint's EMA weights (Hugging Face has one set)."""
  if is_hf(checkpoint):
    config, variables = hf.load(checkpoint)
    return config, Execution(), variables
  config, variables = native_weights.load(checkpoint, use_ema=use_ema)
  return config, native_weights.saved_execution(checkpoint), variables


def training_tokenizer(checkpoint: str | os.PathLike) -> str:
  """The tokenizer of the data a training checkpoint was trained on, from its saved config."""
  saved: dict[str, Any] = checkpoint_layout.saved_config(checkpoint).get("config") or {}
  source = saved.get("data", {}).get("source")
  if source == "demo":
    demo = data.ensure_demo_data(os.path.expanduser(saved["data"]["demo_dir"]),
                                 epochs=saved["train"]["epochs"], seed=saved["data"]["seed"],
                                 train_per_task=saved["data"].get(
                                     "demo_per_task", data.demo.TRAIN_PER_TASK))
    return demo.tokenizer_path
  if source == "path" and storage.path(storage.join(saved["data"]["path"],
                                                     "metadata.json")).exists():
    return saved["data"]["path"]  # tokenizer.load reads metadata.json's tokenizer_info
  raise FileNotFoundError(f"checkpoint {checkpoint}: its saved config names no tokenizer that "
                          f"exists (data.source={source!r}); pass the tokenizer explicitly "
                          "(--tokenizer=PATH)")


def load_tokenizer(checkpoint: str | os.PathLike,
                   explicit: Optional[str] = None) -> tokenizer.Tokenizer:
  """`explicit`, else tokenizer.json beside the checkpoint, else the training data's."""
  if explicit:
    return tokenizer.load(explicit)
  if storage.path(storage.join(checkpoint, "tokenizer.json")).exists():
    return tokenizer.load(str(checkpoint))
  if is_hf(checkpoint):
    raise FileNotFoundError(f"{checkpoint} is a Hugging Face directory without tokenizer.json; "
                            "pass --tokenizer=PATH (a tokenizer.json or its directory)")
  return tokenizer.load(training_tokenizer(checkpoint))
