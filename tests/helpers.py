"""Shared test fixtures: packed batches and an independent NumPy transcription of the model."""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import stat
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np

import hrm_jax
from hrm_jax.models import spec_of

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
  """Run a script of the repository; it must succeed (ok) or fail with a message (not ok)."""
  out = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
  assert (out.returncode == 0) == ok, out.stderr[-3000:]
  return out


def as_test_process(env: dict[str, str]) -> dict[str, str]:
  """`env` for a script whose numbers must equal this process's: the XLA settings conftest
  gives the test processes only (8 CPU devices, optimisation level 0)."""
  return {**env, "XLA_FLAGS": (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_"
                               "count=8 --xla_backend_optimization_level=0").strip()}


def tiny_config(arch: str = "hrm", **overrides) -> hrm_jax.ModelConfig:
  kw = dict(hidden_size=32, num_heads=2, n_layers=4, vocab_size=61, max_seq_len=64)
  kw.update(overrides)
  return hrm_jax.model_config("B", arch, **kw)


@functools.lru_cache(maxsize=None)
def tiny_model(arch: str = "hrm", **overrides) -> tuple[hrm_jax.ModelConfig, dict]:
  """A tiny_config model and its initial variables (cached per arch and overrides)."""
  cfg = tiny_config(arch, **overrides)
  batch = pack_rows([[([1, 2, 3], [4])]], 8)
  return cfg, hrm_jax.LanguageModel(cfg).init(jax.random.PRNGKey(1), batch)


def prompts_of(lengths, vocab: int, seed: int = 0) -> list[list[int]]:
  """Random prompts of the given lengths (ids 1..vocab-1)."""
  rng = np.random.default_rng(seed)
  return [rng.integers(1, vocab, n).tolist() for n in lengths]


def pack_rows(rows: list[list[tuple[list[int], list[int]]]], seq_len: int) -> dict:
  """Rows of (prompt tokens, response tokens) examples -> a model batch (NumPy, int32).

  Each example is laid out contiguously: positions restart at 0, segment ids count from 1,
  prefix_mask marks prompt tokens; the rest of the row is padding (segment 0).
  """
  b = len(rows)
  out = {k: np.zeros((b, seq_len), np.int32) for k in ("inputs", "positions", "segment_ids")}
  out["prefix_mask"] = np.zeros((b, seq_len), bool)
  for r, examples in enumerate(rows):
    t = 0
    for seg, (prompt, response) in enumerate(examples, start=1):
      n = len(prompt) + len(response)
      assert t + n <= seq_len, "examples do not fit the row"
      out["inputs"][r, t:t + n] = prompt + response
      out["positions"][r, t:t + n] = np.arange(n)
      out["segment_ids"][r, t:t + n] = seg
      out["prefix_mask"][r, t:t + len(prompt)] = True
      t += n
  return out


def random_rows(rng: np.random.Generator, batch: int, seq_len: int, vocab: int,
                max_examples: int = 3) -> dict:
  """Random packings, including empty prompts, 1-token responses and padding."""
  rows = []
  for _ in range(batch):
    examples, used = [], 0
    for _ in range(rng.integers(1, max_examples + 1)):
      room = seq_len - used
      if room < 2:
        break
      n = int(rng.integers(1, room + 1))
      p = int(rng.integers(0, n + 1))
      examples.append((list(rng.integers(1, vocab, p)), list(rng.integers(1, vocab, n - p))))
      used += n
    rows.append(examples)
  return pack_rows(rows, seq_len)


# --- independent NumPy forward (float64), written from docs/reference.md alone --------

def _rms(x, eps):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _np_mask(seg, prefix):
  """Per query, the allowed keys are [start of its example, max(q + 1, end of its prompt))."""
  b, s = seg.shape
  mask = np.zeros((b, s, s), bool)
  for r in range(b):
    for q in range(s):
      same = [k for k in range(s) if seg[r, k] == seg[r, q]]
      if seg[r, q] == 0:
        mask[r, q, [k for k in same if k <= q]] = True
        continue
      start = min(same)
      prompt_end = max([k + 1 for k in same if prefix[r, k]], default=start)
      mask[r, q, start:max(q + 1, prompt_end)] = True
  return mask


def _np_H_options(cfg) -> dict:
  """The H stack's block options: cfg's, with the "field=value,..." of H_override over them."""
  opts = {f: getattr(cfg, f) for f in ("norm_type", "norm_eps", "pos_emb_type")}
  for item in filter(None, cfg.H_override.split(",")):
    key, value = item.split("=")
    opts[key] = float(value) if key == "norm_eps" else value
  return opts


def _np_stack(p, x, batch, cfg, opts=None):
  """One stack pass: p holds the scanned (stacked) kernels of hrm_jax's Stack; opts the block
  options (norm_type, norm_eps, pos_emb_type; cfg's by default). The layer count and MLP
  width come from the kernels' shapes."""
  opts = opts or {f: getattr(cfg, f) for f in ("norm_type", "norm_eps", "pos_emb_type")}
  eps, post = opts["norm_eps"], opts["norm_type"] == "post"
  h, k = cfg.num_heads, cfg.head_dim
  pos = batch["positions"].astype(np.float64)
  inv = 1.0 / cfg.rope_theta ** (np.arange(0, k, 2) / k)
  fr = pos[..., None] * inv
  emb = np.concatenate([fr, fr], -1)
  cos, sin = np.cos(emb)[:, :, None], np.sin(emb)[:, :, None]

  def rope(t):
    if opts["pos_emb_type"] == "none":
      return t
    t1, t2 = t[..., :k // 2], t[..., k // 2:]
    return t * cos + np.concatenate([-t2, t1], -1) * sin

  prefix = batch["prefix_mask"] & (cfg.attn_type == "prefixlm")
  mask = _np_mask(batch["segment_ids"], prefix)
  layers = p["layers"]
  n = layers["attn"]["gqkv_proj"]["kernel"].shape[0]
  for i in range(n):
    w = {name: np.asarray(layers[m][name]["kernel"][i], np.float64)
         for m, names in (("attn", ("gqkv_proj", "o_proj")), ("mlp", ("gate_up_proj", "down_proj")))
         for name in names}
    hN = x if post else _rms(x, eps)
    d = x.shape[-1]
    gqkv = hN @ w["gqkv_proj"].reshape(d, 4 * h * k)
    g, q, kk, v = np.split(gqkv.reshape(*x.shape[:2], 4 * h, k), 4, axis=2)
    q, kk = rope(q), rope(kk)
    s = np.einsum("bqhd,bkhd->bhqk", q, kk) / np.sqrt(k)
    s = np.where(mask[:, None], s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", a, v) / (1 + np.exp(-g))
    x = x + o.reshape(*x.shape[:2], h * k) @ w["o_proj"].reshape(h * k, d)
    x = _rms(x, eps) if post else x
    hN = x if post else _rms(x, eps)
    gu = hN @ w["gate_up_proj"].reshape(d, -1)
    gate, up = np.split(gu, 2, axis=-1)
    x = x + (gate / (1 + np.exp(-gate)) * up) @ w["down_proj"]
    x = _rms(x, eps) if post else x
  return x if post else _rms(x, eps)  # post-norm: no final norm


# --- each arch's recursion, transcribed from the reference's model files ----------------
# run(stack, z, tag) applies one pass of stack `stack` to z; tag = (H or L or stack, index in
# execution order) names the pass for the gradient windows below. Keyed by ArchSpec.family.

def _hl_recursion(H_stack):
  def recursion(cfg, x, z0, run):
    z_H, z_L = x, z0
    for i in range(cfg.H_cycles):
      for j in range(cfg.L_cycles):
        z_L = run("L", z_L + z_H, ("L", i * cfg.L_cycles + j))
      z_H = run(H_stack, z_H + z_L, ("H", i))
    return z_H
  return recursion


def _rins_recursion(cfg, x, z0, run):
  z = z0
  for i in range(cfg.L_cycles):
    z = run("L", z + x, ("L", i))
  return run("H", z, ("H", 0))


def _ut_recursion(cfg, x, z0, run):
  z = z0
  for i in range(cfg.options.cycles):
    z = run("L", z + x, ("L", i))
  return z


RECURSIONS = {
    "hrm": _hl_recursion("H"), "trm": _hl_recursion("L"), "rins": _rins_recursion,
    "ut": _ut_recursion, "transformer": lambda cfg, x, z0, run: run("stack", x, ("stack", 0)),
}


def _hl_window(cfg, H_bp, L_bp):
  n_L = cfg.H_cycles * cfg.L_cycles
  return lambda tag: tag[1] >= (cfg.H_cycles - H_bp if tag[0] == "H" else n_L - L_bp)


def _hrm_window(cfg, bp):
  H_bp = min(cfg.H_cycles, bp - 1)  # H first, at least one pass left to L
  return _hl_window(cfg, H_bp, bp - H_bp)


# family -> (cfg, bp_steps) -> which passes (by tag) carry gradient.
GRAD_WINDOWS = {
    "hrm": _hrm_window,
    "trm": lambda cfg, bp: _hl_window(cfg, cfg.options.H_bp_steps, cfg.options.L_bp_steps),
    "rins": lambda cfg, bp: lambda tag: (tag[0] == "H" or
                                         tag[1] >= cfg.L_cycles - cfg.options.L_bp_cycles),
    "ut": lambda cfg, bp: lambda tag: tag[1] >= cfg.options.cycles - cfg.options.bp_cycles,
    "transformer": lambda cfg, bp: lambda tag: True,
}


def reference_has_grad(cfg: hrm_jax.ModelConfig, bp_steps) -> dict[str, bool]:
  """Which parameter groups get a gradient (the reference's `grad is not None`), by running
  the recursion on sets: a value holds the groups it reaches through gradient-carrying passes;
  a pass without gradient returns a detached value. Groups: "embed", each stack, "head"."""
  family = spec_of(cfg).family
  window = (lambda tag: True) if bp_steps is None else GRAD_WINDOWS[family](cfg, bp_steps)

  class Reach(frozenset):
    def __add__(self, other):
      return Reach(self | other)

  run = lambda name, z, tag: Reach(z | {name}) if window(tag) else Reach()
  out = RECURSIONS[family](cfg, Reach({"embed"}), Reach(), run)
  return {group: group in out for group in ("embed", *spec_of(cfg).stacks)} | {"head": True}


def numpy_forward(cfg: hrm_jax.ModelConfig, variables, batch) -> np.ndarray:
  """Logits [B, S, V] of every arch by plain loops over the reference recursion."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                             nn.unbox(variables["params"]))
  x = p["embed_tokens"][batch["inputs"]] * cfg.embedding_scale
  core = p["core"]
  run = lambda name, z, tag: _np_stack(core[name], z, batch, cfg,
                                       _np_H_options(cfg) if name == "H" else None)
  z0 = None
  if "buffers" in variables:
    z0 = np.broadcast_to(np.asarray(variables["buffers"]["core"]["z_L_init"], np.float64), x.shape)
  out = RECURSIONS[spec_of(cfg).family](cfg, x, z0, run)
  return out @ p["lm_head"]["kernel"]


@contextlib.contextmanager
def umask(mask: int):
  """Run the body under process umask `mask` (restored after)."""
  old = os.umask(mask)
  try:
    yield
  finally:
    os.umask(old)


def modes(root) -> dict[str, set[int]]:
  """{"dirs": {modes}, "files": {modes}} of `root` and everything under it."""
  out: dict[str, set[int]] = {"dirs": {stat.S_IMODE(os.stat(root).st_mode)}, "files": set()}
  for folder, dirs, files in os.walk(root):
    out["dirs"] |= {stat.S_IMODE(os.stat(os.path.join(folder, d)).st_mode) for d in dirs}
    out["files"] |= {stat.S_IMODE(os.stat(os.path.join(folder, f)).st_mode) for f in files}
  return out


def files_of(root) -> dict[str, bytes]:
  """Every file under `root` (relative path -> bytes), to compare directory trees."""
  out = {}
  for folder, _, names in os.walk(root):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


class NumpyAdamAtan2:
  """The reference optimiser's step() and EMA in float64, per named tensor, written from
  docs/reference.md: a tensor whose gradient is None is skipped entirely (no decay, no
  moments, no count, no EMA), and each tensor counts its own steps."""

  def __init__(self, params: dict[str, np.ndarray], b1: float, b2: float, weight_decay: float,
               ema_decay: float):
    self.p = {k: np.asarray(v, np.float64).copy() for k, v in params.items()}
    self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
    self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
    self.t = {k: 0 for k in self.p}
    self.ema = {k: v.copy() for k, v in self.p.items()}
    self.b1, self.b2, self.wd, self.ema_decay = b1, b2, weight_decay, ema_decay

  def step(self, grads: dict[str, "np.ndarray | None"], lr: float) -> None:
    for k, g in grads.items():
      if g is None:
        continue
      g = np.asarray(g, np.float64)
      self.p[k] *= 1 - lr * self.wd
      self.m[k] += (1 - self.b1) * (g - self.m[k])
      self.v[k] = self.b2 * self.v[k] + (1 - self.b2) * g * g
      self.t[k] += 1
      t = self.t[k]
      denom = np.sqrt(self.v[k]) / np.sqrt(1 - self.b2**t)
      self.p[k] -= lr / (1 - self.b1**t) * np.arctan2(self.m[k], denom)
      self.ema[k] += (1 - self.ema_decay) * (self.p[k] - self.ema[k])


def named(tree) -> dict[str, np.ndarray]:
  """{"a/b/c": leaf} of a (possibly boxed) tree, leaves as NumPy arrays."""
  return {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(nn.unbox(tree))}


def group_of(name: str) -> str:
  """The reference_has_grad group of a parameter named as `named` names it."""
  if name.startswith("embed_tokens"):
    return "embed"
  if name.startswith("core/"):
    return name.split("/")[1]
  return "head"
