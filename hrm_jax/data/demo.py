"""Embedded demo data: synthetic reasoning tasks where depth of computation matters.

Multi-digit addition and multiplication (carries), sorting digits, and nested boolean and
modular arithmetic expressions: answers are short, but computing them needs several sequential
steps, which is what the H/L recurrence is for. Generated deterministically from a seed in
well under a second, tokenised by a character-level tokenizer built here with `tokenizers`
(printable ASCII plus the published special tokens: 105 ids, model vocab 256), and written in
the data_io format to a cache folder, so a newcomer trains without downloading anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import numpy as np
import tokenizers

from hrm_jax import atomic
from hrm_jax.data.sampled import concat_examples, write_sampled
from hrm_jax.tokenizer import (DEFAULT_BOQ, DEFAULT_CONDITIONS, DEFAULT_EOA, DEFAULT_EOQ, Tokenizer,
                               TokenizerInfo)

GENERATOR_VERSION = 2  # bump whenever generated data or the tokenizer changes
CONDITION = "synth"
TRAIN_PER_TASK = 4000  # distinct training examples per task unless a config says otherwise
SPECIAL_TOKENS = [DEFAULT_BOQ, DEFAULT_EOQ, DEFAULT_EOA, *DEFAULT_CONDITIONS.values()]
CACHE_FILES = ("manifest.json", "tokenizer.json", "tokenizer_info.json", "eval.jsonl", "train")


def build_tokenizer() -> tokenizers.Tokenizer:
  """Character-level: <pad>=0 (the padding id), <unk>, newline, printable ASCII, specials."""
  vocab = {"<pad>": 0, "<unk>": 1}
  for ch in ["\n", *map(chr, range(32, 127))]:
    vocab[ch] = len(vocab)
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tok.decoder = tokenizers.decoders.Fuse()
  tok.add_special_tokens(SPECIAL_TOKENS)
  return tok


# --- tasks: rng -> (instruction, response) ----------------------------------------------

def _number(rng: np.random.Generator, max_digits: int) -> int:
  digits = int(rng.integers(1, max_digits + 1))
  return int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits))


def least_significant_first(n: int) -> str:
  """Sums and products are written units digit first (`7074` as `4707`): each digit then
  depends only on the digits before it and one carry, the order a small model learns
  column arithmetic in (the small-transformer arithmetic literature: reversed outputs)."""
  return str(n)[::-1]


def task_add(rng: np.random.Generator) -> tuple[str, str]:
  a, b = _number(rng, 3), _number(rng, 3)
  return f"{a}+{b}", least_significant_first(a + b)


def task_mul(rng: np.random.Generator) -> tuple[str, str]:
  a, b = _number(rng, 3), _number(rng, 1)
  return f"{a}*{b}", least_significant_first(a * b)


def task_sort(rng: np.random.Generator) -> tuple[str, str]:
  digits = rng.integers(0, 10, int(rng.integers(3, 9))).tolist()
  return "sort " + "".join(map(str, digits)), "".join(map(str, sorted(digits)))


def _bool_expr(rng: np.random.Generator, depth: int) -> tuple[str, bool]:
  if depth == 0 or rng.random() < 0.25:
    v = bool(rng.integers(2))
    return "TF"[not v], v
  op = "&|!"[int(rng.integers(3))]
  a, va = _bool_expr(rng, depth - 1)
  if op == "!":
    return f"!{a}" if len(a) == 1 else f"!({a})", not va
  b, vb = _bool_expr(rng, depth - 1)
  return f"({a}{op}{b})", (va and vb) if op == "&" else (va or vb)


def task_bool(rng: np.random.Generator) -> tuple[str, str]:
  expr, value = _bool_expr(rng, int(rng.integers(1, 4)))
  while len(expr) == 1:
    expr, value = _bool_expr(rng, int(rng.integers(1, 4)))
  return expr, "TF"[not value]


def _arith_expr(rng: np.random.Generator, depth: int) -> tuple[str, int]:
  if depth == 0 or rng.random() < 0.25:
    v = int(rng.integers(10))
    return str(v), v
  op = "+-*"[int(rng.integers(3))]
  (a, va), (b, vb) = _arith_expr(rng, depth - 1), _arith_expr(rng, depth - 1)
  return f"({a}{op}{b})", va + vb if op == "+" else va - vb if op == "-" else va * vb


def task_arith(rng: np.random.Generator) -> tuple[str, str]:
  expr, value = _arith_expr(rng, int(rng.integers(1, 3)))
  while len(expr) == 1:
    expr, value = _arith_expr(rng, int(rng.integers(1, 3)))
  return f"{expr}%10", str(value % 10)


TASKS: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "add": task_add, "mul": task_mul, "sort": task_sort, "bool": task_bool, "arith": task_arith,
}


def generate(seed: int, train_per_task: int, eval_per_task: int
             ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
  """(train rows, eval rows): {task, instruction, response, condition}; eval instructions
  never occur in training. Deterministic in (seed, sizes)."""
  train, evals = [], []
  for t, (name, fn) in enumerate(TASKS.items()):
    rng = np.random.default_rng([seed, t])
    seen: set[str] = set()
    for want, dest in ((eval_per_task, evals), (train_per_task, train)):
      made, attempts = 0, 0
      while made < want:
        attempts += 1
        if attempts > 50 * want + 1000:
          raise RuntimeError(f"task {name}: cannot draw {want} distinct examples")
        inst, resp = fn(rng)
        if inst in seen:
          continue
        seen.add(inst)
        dest.append({"task": name, "instruction": inst, "response": resp, "condition": CONDITION})
        made += 1
  return train, evals


@dataclasses.dataclass(frozen=True)
class DemoData:
  root: str
  train_dir: str  # a data_io sampled directory
  eval_examples: list[dict[str, str]]
  tokenizer_path: str  # tokenizer.json
  tokenizer_info: TokenizerInfo

  def tokenizer(self) -> Tokenizer:
    return Tokenizer.load(self.tokenizer_path, self.tokenizer_info)


def _load(root: str) -> DemoData:
  with open(os.path.join(root, "tokenizer_info.json")) as f:
    info = TokenizerInfo.from_dict(json.load(f))
  with open(os.path.join(root, "eval.jsonl")) as f:
    evals = [json.loads(line) for line in f]
  return DemoData(root, os.path.join(root, "train"), evals, os.path.join(root, "tokenizer.json"),
                  info)


def ensure_demo_data(cache_dir: str, *, epochs: int = 8, seed: int = 0,
                     train_per_task: int = TRAIN_PER_TASK, eval_per_task: int = 64,
                     max_seq_len: int = 256) -> DemoData:
  """The demo set in `cache_dir`, generated once per (version, settings) and then reused.

  The whole folder is built beside its path and renamed into place (`atomic.directory`, umask
  modes), so an interrupted run never leaves a half-written cache; a folder without a matching
  manifest is replaced only if it holds nothing but demo files. max_seq_len: model context
  recorded in the metadata.
  """
  settings = {"version": GENERATOR_VERSION, "epochs": epochs, "seed": seed,
              "train_per_task": train_per_task, "eval_per_task": eval_per_task,
              "max_seq_len": max_seq_len}
  root = os.path.abspath(os.path.join(
      cache_dir, f"demo_v{GENERATOR_VERSION}_s{seed}_e{epochs}_n{train_per_task}_"
      f"{eval_per_task}_l{max_seq_len}"))
  manifest = os.path.join(root, "manifest.json")
  if _manifest_matches(manifest, settings):
    return _load(root)
  foreign = os.path.isdir(root) and _stale_cache(root)
  if foreign:
    raise FileExistsError(f"{root}: {foreign}; refusing to rebuild the demo cache over it "
                          "(move those files away or choose another data.demo_dir)")
  try:
    with atomic.directory(root, overwrite=True, same_kind=_stale_cache) as tmp:
      _write(str(tmp), root, settings)
      if _manifest_matches(manifest, settings):
        raise _BuiltElsewhere  # another process finished first: keep its copy
  except _BuiltElsewhere:
    pass
  return _load(root)


class _BuiltElsewhere(Exception):
  pass


def _manifest_matches(manifest: str, settings: dict[str, Any]) -> bool:
  try:
    with open(manifest) as f:
      return json.load(f) == settings
  except (OSError, ValueError):
    return False


def _stale_cache(path: Any) -> str | None:
  """None when `path` holds only files a demo cache has (an interrupted or older build)."""
  extra = sorted(set(os.listdir(path)) - set(CACHE_FILES))
  return f"it holds {extra}, which a demo cache does not" if extra else None


def _write(tmp: str, root: str, settings: dict[str, Any]) -> None:
  tok_json = os.path.join(tmp, "tokenizer.json")
  build_tokenizer().save(tok_json)
  vocab = tokenizers.Tokenizer.from_file(tok_json).get_vocab_size(with_added_tokens=True)
  info = TokenizerInfo.default(os.path.join(root, "train"), vocab)
  with open(os.path.join(tmp, "tokenizer_info.json"), "w") as f:
    json.dump(info.to_dict(), f, indent=1)
  tok = Tokenizer.load(tok_json, info)

  train, evals = generate(settings["seed"], settings["train_per_task"], settings["eval_per_task"])
  with open(os.path.join(tmp, "eval.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in evals)
  prompts = tok.encode_texts([r["instruction"] for r in train])
  answers = tok.encode_texts([r["response"] for r in train])
  cond = tok.condition_tokens(CONDITION)
  inst = [[tok.boq_id, *cond, *p, tok.eoq_id] for p in prompts]
  resp = [[*a, tok.eoa_id] for a in answers]
  tokens, examples = concat_examples(inst, resp)
  if int(examples.lengths.max()) > settings["max_seq_len"]:
    raise ValueError(f"a demo example exceeds max_seq_len={settings['max_seq_len']}")
  write_sampled(os.path.join(tmp, "train"), tokens=tokens,
                examples=examples,
                tokenizer_info=info.to_dict(), max_seq_len=settings["max_seq_len"] + 1,
                epochs=settings["epochs"], seed=settings["seed"],
                extra_files={"tokenizer.json": tok_json},
                extra_json={"tokenizer_info.json": info.to_dict()})
  with open(os.path.join(tmp, "manifest.json"), "w") as f:
    json.dump(settings, f, indent=1)
