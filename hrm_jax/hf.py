"""`HrmTextForCausalLM` checkpoints (docs/reference.md#hugging-face-format) <-> hrm_jax.

`load` reads `config.json` plus `model.safetensors` (or shards listed in
`model.safetensors.index.json`) with either the fused key layout of the released model
(`attn.gqkv_proj` = gate, q, k, v; `mlp.gate_up_proj` = gate, up) or the split names of
transformers' modules (`self_attn.{gate,q,k,v,o}_proj`, `mlp.{gate,up}_proj`), in bf16 or
f32. `save` writes the fused layout (f32 or bf16), which transformers converts on load, and
with a tokenizer the files `AutoTokenizer` reads. Torch linear
weights are [out, in]; hrm_jax kernels are [in, out], split by role (see layers.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
from typing import Any, Optional

import flax.linen as nn
import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from hrm_jax import atomic, storage
from hrm_jax.config import ModelConfig
from hrm_jax.tokenizer import Tokenizer

MODEL_TYPE = "hrm_text"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
STACKS = ("H", "L")
# Files `save` writes (and replaces): the config and every weights file, sharded or not, so no
# stale shard or index of an earlier export survives next to the new weights.
_EXPORT_FILE = re.compile(r"config\.json|model.*\.safetensors(\.index\.json)?")
DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}
# Marks of a training run or of data: a directory holding any of them is never replaced.
_NOT_AN_EXPORT = ("metrics.jsonl", "metadata.json", "manifest.json")


def _layers_per_stack(hf: dict[str, Any], where: str, in_weights: Optional[int]) -> int:
  """Per-stack layer count: `num_layers_per_stack` when set, else the weights' count checked
  against the three meanings `num_hidden_layers` has in the wild: per stack (transformers'
  legacy configs), both stacks (the reference's convert_to_hf.py writes its n_layers), or
  the inflated cache slot count layers * H_cycles * (L_cycles + 1) (transformers' own)."""
  if hf.get("num_layers_per_stack"):
    return int(hf["num_layers_per_stack"])
  total = hf.get("num_hidden_layers")
  if not total:
    raise ValueError(f"{where}: needs num_layers_per_stack (or num_hidden_layers)")
  if in_weights is None:
    return int(total)
  n, slots = in_weights, hf.get("H_cycles", 2) * (hf.get("L_cycles", 3) + 1)
  meanings = {"per stack": n, "both stacks": 2 * n, "inflated (layers*H_cycles*(L_cycles+1))":
              n * slots}
  if total not in meanings.values():
    raise ValueError(f"{where}: num_hidden_layers={total} fits none of the layouts of weights "
                     f"with {n} layers per stack: "
                     + ", ".join(f"{k} = {v}" for k, v in meanings.items())
                     + "; set num_layers_per_stack")
  return n


def config_from_hf(hf: dict[str, Any], where: str = "config.json",
                   layers_in_weights: Optional[int] = None) -> ModelConfig:
  """ModelConfig of an hrm_text config.json; every shape field is taken as given.

  `layers_in_weights` (the `layers.N` count of each stack) settles what num_hidden_layers
  means (see `_layers_per_stack`); without it num_hidden_layers is taken as per stack."""
  if hf.get("model_type") != MODEL_TYPE:
    raise ValueError(f"{where}: model_type={hf.get('model_type')!r}, expected {MODEL_TYPE!r}")
  need = ("hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
  missing = [k for k in need if k not in hf]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}")
  heads = hf["num_attention_heads"]
  kv_heads = hf.get("num_key_value_heads") or heads
  if kv_heads != heads:
    raise ValueError(f"{where}: num_key_value_heads={kv_heads} != num_attention_heads={heads};"
                     " HRM-Text uses multi-head attention")
  per_stack = _layers_per_stack(hf, where, layers_in_weights)
  rope = hf.get("rope_parameters") or {}
  if rope.get("rope_type", "default") != "default":
    raise ValueError(f"{where}: rope_parameters.rope_type={rope['rope_type']!r} is not "
                     "supported (only 'default' RoPE)")
  scale = hf.get("embedding_scale")
  if scale is None:
    scale = 1.0 / hf.get("initializer_range", 0.02)
  return ModelConfig(
      arch="hrm", n_layers=2 * per_stack, half_layers=True, hidden_size=hf["hidden_size"],
      num_heads=heads, head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      intermediate_size=hf["intermediate_size"], vocab_size=hf["vocab_size"],
      H_cycles=hf.get("H_cycles", 2), L_cycles=hf.get("L_cycles", 3),
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
      max_seq_len=hf.get("max_position_embeddings", 4096), embedding_scale=float(scale),
      attn_type="prefixlm" if hf.get("prefix_lm", True) else "causal")


# The export's allow-list: every ModelConfig field and how transformers' HrmText config holds
# it. EXPORTED fields are written to config.json (`config_to_hf`); FIXED fields must have the
# one value HrmText computes with; INIT_ONLY fields shape fresh weights only (expansion through
# the exported intermediate_size). A field in none of them (a new block option) is refused
# until it is placed here, so nothing is exported that transformers would compute otherwise.
EXPORTED = ("hidden_size", "intermediate_size", "num_heads", "head_dim", "n_layers", "H_cycles",
            "L_cycles", "vocab_size", "norm_eps", "rope_theta", "max_seq_len",
            "embedding_scale", "attn_type")
FIXED: dict[str, Any] = {"arch": "hrm", "half_layers": True, "norm_type": "pre",
                         "pos_emb_type": "rope", "H_override": "", "options": None}
INIT_ONLY = ("init_type", "init_std", "expansion")


def check_exportable(c: ModelConfig) -> None:
  """ValueError unless every field of `c` is on the allow-list, the FIXED ones at their value."""
  for f in dataclasses.fields(c):
    if f.name not in EXPORTED + INIT_ONLY and f.name not in FIXED:
      raise ValueError(f"Hugging Face export: ModelConfig.{f.name} is not on hrm_jax/hf.py's "
                       "allow-list (EXPORTED, FIXED, INIT_ONLY): place it there once "
                       "transformers' HrmText config can express it")
    if f.name in FIXED and getattr(c, f.name) != FIXED[f.name]:
      raise ValueError(f"Hugging Face export: ModelConfig.{f.name}={getattr(c, f.name)!r} "
                       f"cannot be expressed by transformers' HrmText config (it has "
                       f"{FIXED[f.name]!r} only); keep this model in the native format")


def config_to_hf(c: ModelConfig, dtype: str = "float32",
                 token_ids: Optional[dict[str, int]] = None) -> dict[str, Any]:
  """config.json of `c` as transformers writes it (num_hidden_layers inflated), for weights
  stored in `dtype`; `token_ids` adds bos/eos/pad_token_id."""
  if c.arch != "hrm":
    raise ValueError(f"Hugging Face export supports arch 'hrm' only, got {c.arch!r}")
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}; expected one of {sorted(DTYPES)}")
  check_exportable(c)
  return {
      "architectures": ["HrmTextForCausalLM"], "model_type": MODEL_TYPE,
      "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
      "num_attention_heads": c.num_heads, "head_dim": c.head_dim,
      "num_layers_per_stack": c.layers_per_stack,
      "num_hidden_layers": c.layers_per_stack * c.H_cycles * (c.L_cycles + 1),
      "H_cycles": c.H_cycles, "L_cycles": c.L_cycles, "vocab_size": c.vocab_size,
      "rms_norm_eps": c.norm_eps,
      "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default"},
      "max_position_embeddings": c.max_seq_len, "embedding_scale": c.embedding_scale,
      "initializer_range": 1.0 / c.embedding_scale, "prefix_lm": c.attn_type == "prefixlm",
      "tie_word_embeddings": False, "hidden_act": "silu",
      "dtype": dtype, "torch_dtype": dtype,  # transformers >= 5 reads dtype, older torch_dtype
      **(token_ids or {}),
  }


def token_ids(tok: Tokenizer) -> dict[str, int]:
  """bos = boq (a prompt starts with it), eos = eoa (a response ends with it), pad."""
  return {"bos_token_id": tok.boq_id, "eos_token_id": tok.eoa_id, "pad_token_id": tok.pad_id}


def tokenizer_files(tok: Tokenizer, config: ModelConfig) -> dict[str, Any]:
  """{file name: JSON} of what AutoTokenizer reads besides tokenizer.json, plus
  tokenizer_info.json (the HRM-Text prompt format, read by hrm_jax.tokenizer.load) and
  generation_config.json (generate() stops at eoa)."""
  special = {"bos_token": tok.info.boq, "eos_token": tok.info.eoa,
             "pad_token": tok.id_to_token(tok.pad_id)}
  info = {**tok.info.to_dict(), "tokenizer_path": "tokenizer.json"}
  return {
      "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast",
                                "model_max_length": config.max_seq_len,
                                "clean_up_tokenization_spaces": False, **special},
      "special_tokens_map.json": special,
      "tokenizer_info.json": info,
      "generation_config.json": {**token_ids(tok), "do_sample": False},
  }


def _hf_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Every fused-layout key and its torch shape."""
  d, hk, m = c.hidden_size, c.num_heads * c.head_dim, c.intermediate_size
  shapes = {"model.embed_tokens.weight": (c.vocab_size, d), "lm_head.weight": (c.vocab_size, d),
            "model.z_L_init": (d,)}
  for s in STACKS:
    for n in range(c.layers_per_stack):
      pre = f"model.{s}_module.layers.{n}"
      shapes.update({f"{pre}.attn.gqkv_proj.weight": (4 * hk, d), f"{pre}.attn.o_proj.weight":
                     (d, hk), f"{pre}.mlp.gate_up_proj.weight": (2 * m, d),
                     f"{pre}.mlp.down_proj.weight": (d, m)})
  return shapes


# split name -> (fused name, index along the fused output, number of parts)
_SPLIT = {
    "self_attn.gate_proj": ("attn.gqkv_proj", 0, 4), "self_attn.q_proj": ("attn.gqkv_proj", 1, 4),
    "self_attn.k_proj": ("attn.gqkv_proj", 2, 4), "self_attn.v_proj": ("attn.gqkv_proj", 3, 4),
    "self_attn.o_proj": ("attn.o_proj", 0, 1),
    "mlp.gate_proj": ("mlp.gate_up_proj", 0, 2), "mlp.up_proj": ("mlp.gate_up_proj", 1, 2),
}


def _read_json(file: pathlib.Path) -> Any:
  try:
    return json.loads(file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file}: not valid JSON ({e})") from e


def _weight_files(path: pathlib.Path) -> list[pathlib.Path]:
  """The safetensors files of `path`: the shards its index names, else model.safetensors.

  Index entries must be relative paths inside `path` (checked on the names, not through
  symlinks: a Hub cache snapshot links its files to blobs elsewhere)."""
  if not (path / INDEX).exists():
    if not (path / WEIGHTS).exists():
      raise FileNotFoundError(f"{path}: neither {WEIGHTS} nor {INDEX} found")
    return [path / WEIGHTS]
  index = _read_json(path / INDEX)
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict) or not weight_map:
    raise ValueError(f"{path / INDEX}: expected an object with a non-empty 'weight_map'")
  files = []
  for name in sorted(set(weight_map.values())):
    norm = os.path.normpath(name) if isinstance(name, str) and name else ".."
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
      raise ValueError(f"{path / INDEX}: weight_map file {name!r} is not a path inside {path}")
    if not (path / norm).is_file():
      raise FileNotFoundError(f"{path / norm}: listed in {path / INDEX} but missing")
    files.append(path / norm)
  return files


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  tensors = {}
  for file in _weight_files(path):
    try:
      local = storage.cached_copy(str(file)) if storage.is_remote(file) else file
      with safe_open(str(local), framework="np") as f:
        for key in f.keys():
          tensors[key] = f.get_tensor(key).astype(np.float32)
    except (SafetensorError, OSError, ValueError) as e:
      raise ValueError(f"{file}: not a readable safetensors file (truncated or corrupt?): "
                       f"{e}") from e
  return tensors


def _fuse(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Split q/k/v/gate and gate/up names -> the fused layout (other keys pass through)."""
  fused, parts = {}, {}
  for key, value in tensors.items():
    split = next((s for s in _SPLIT if f".{s}.weight" in key), None)
    if split is None:
      fused[key] = value
      continue
    target, i, n = _SPLIT[split]
    parts.setdefault(key.replace(split, target), [None] * n)[i] = (key, value)
  for key, pieces in parts.items():
    if any(p is None for p in pieces):
      have = [p[0] for p in pieces if p is not None]
      raise ValueError(f"checkpoint has only {have} of the {len(pieces)} parts of {key}")
    fused[key] = np.concatenate([v for _, v in pieces], axis=0)
  return fused


def _layers_in(tensors: dict[str, np.ndarray], path: pathlib.Path) -> Optional[int]:
  """The number of `model.{H,L}_module.layers.N` blocks in the weights (None when there are
  none: the shape check then lists what is missing); both stacks must agree."""
  found = {s: {int(m.group(1)) for k in tensors
               if (m := re.match(rf"model\.{s}_module\.layers\.(\d+)\.", k))} for s in STACKS}
  counts = {s: max(found[s]) + 1 if found[s] else 0 for s in STACKS}
  if len(set(counts.values())) != 1:
    raise ValueError(f"{path}: the stacks have different layer counts in the weights "
                     f"({', '.join(f'{s}: {n}' for s, n in counts.items())})")
  return counts["H"] or None


def load(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
  """(ModelConfig, {"params", "buffers"}) of a Hugging Face hrm_text directory, float32
  (local, or in a bucket: its weight files are read from a local cached copy)."""
  path = storage.path(path)
  if not (path / "config.json").exists():
    raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model directory)")
  hf_config = _read_json(path / "config.json")
  if not isinstance(hf_config, dict):
    raise ValueError(f"{path / 'config.json'}: expected a JSON object")
  tensors = _fuse(_read_tensors(path))
  c = config_from_hf(hf_config, str(path / "config.json"), _layers_in(tensors, path))
  want = _hf_shapes(c)
  problems = [f"missing {k} {s}" for k, s in want.items() if k not in tensors]
  problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in tensors.items() if k not in want]
  problems += [f"{k}: shape {tuple(v.shape)}, expected {want[k]}" for k, v in tensors.items()
               if k in want and tuple(v.shape) != want[k]]
  if problems:
    raise ValueError(f"{path}: checkpoint does not match config.json "
                     f"(hidden {c.hidden_size}, heads {c.num_heads}x{c.head_dim}, intermediate "
                     f"{c.intermediate_size}, {c.layers_per_stack} layers per stack):\n  "
                     + "\n  ".join(sorted(problems)))
  h, k, d, m = c.num_heads, c.head_dim, c.hidden_size, c.intermediate_size

  def stack(s: str) -> dict:
    layer = lambda name: np.stack([tensors[f"model.{s}_module.layers.{n}.{name}.weight"]
                                   for n in range(c.layers_per_stack)])
    return {"layers": {
        "attn": {
            "gqkv_proj": {"kernel": layer("attn.gqkv_proj").reshape(-1, 4, h, k, d)
                          .transpose(0, 4, 1, 2, 3)},
            "o_proj": {"kernel": layer("attn.o_proj").transpose(0, 2, 1).reshape(-1, h, k, d)}},
        "mlp": {
            "gate_up_proj": {"kernel": layer("mlp.gate_up_proj").reshape(-1, 2, m, d)
                             .transpose(0, 3, 1, 2)},
            "down_proj": {"kernel": layer("mlp.down_proj").transpose(0, 2, 1)}}}}

  params = {"embed_tokens": tensors["model.embed_tokens.weight"],
            "lm_head": {"kernel": tensors["lm_head.weight"].T},
            "core": {s: stack(s) for s in STACKS}}
  return c, {"params": params, "buffers": {"core": {"z_L_init": tensors["model.z_L_init"]}}}


def weights_of(variables: Any, use_ema: bool = True) -> tuple[Any, Any]:
  """(params, buffers) to export: the `ema` of a training state when use_ema and present.

  `variables` is {"params", "buffers"} (hf.load, native_weights.load) or a training state (a
  `TrainState` or a dict with `params`, `ema`, `buffers`): one naming, the train state's.
  """
  if not isinstance(variables, dict):
    variables = {k: getattr(variables, k) for k in ("params", "ema", "buffers")
                 if hasattr(variables, k)}
  missing = [k for k in ("params", "buffers") if k not in variables]
  if missing:
    raise ValueError(f"variables lack {missing}; expected {{'params', 'buffers'}} or a train "
                     f"state, got keys {sorted(variables)}")
  params = variables["ema"] if use_ema and "ema" in variables else variables["params"]
  return nn.unbox(params), nn.unbox(variables["buffers"])


def to_hf_tensors(c: ModelConfig, variables: Any, use_ema: bool = True) -> dict[str, np.ndarray]:
  """The fused-layout float32 tensors of `variables` (see `weights_of` for use_ema)."""
  p, buffers = weights_of(variables, use_ema)
  p = {"embed_tokens": p["embed_tokens"], "lm_head": p["lm_head"], "core": p["core"]}
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), p)
  out = {"model.embed_tokens.weight": p["embed_tokens"], "lm_head.weight": p["lm_head"]["kernel"].T,
         "model.z_L_init": np.asarray(buffers["core"]["z_L_init"], np.float32)}
  for s in STACKS:
    layers = p["core"][s]["layers"]
    gqkv = layers["attn"]["gqkv_proj"]["kernel"]  # [N, D, 4, H, K]
    o = layers["attn"]["o_proj"]["kernel"]  # [N, H, K, D]
    gu = layers["mlp"]["gate_up_proj"]["kernel"]  # [N, D, 2, M]
    down = layers["mlp"]["down_proj"]["kernel"]  # [N, M, D]
    for n in range(c.layers_per_stack):
      pre = f"model.{s}_module.layers.{n}"
      out[f"{pre}.attn.gqkv_proj.weight"] = gqkv[n].reshape(c.hidden_size, -1).T
      out[f"{pre}.attn.o_proj.weight"] = o[n].reshape(-1, c.hidden_size).T
      out[f"{pre}.mlp.gate_up_proj.weight"] = gu[n].reshape(c.hidden_size, -1).T
      out[f"{pre}.mlp.down_proj.weight"] = down[n].T
  want = _hf_shapes(c)
  bad = [f"{k}: {v.shape} != {want[k]}" for k, v in out.items() if v.shape != want[k]]
  if bad:
    raise ValueError(f"variables do not match the config: {bad}")
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export_kind(path: pathlib.Path) -> Optional[str]:
  """None when `path` is a Hugging Face export that `save(overwrite=True)` may replace, else
  why not. An export is flat: config.json, model*.safetensors and loose files such as the
  tokenizer or a README; a training run (checkpoints/, metrics.jsonl, TensorBoard events),
  a data set or a git clone has subdirectories or marks of its own."""
  names = [p.name for p in path.iterdir()]
  dirs = sorted(n for n in names if (path / n).is_dir())
  if dirs:
    return f"it has subdirectories {dirs}"
  marks = sorted(n for n in names if n in _NOT_AN_EXPORT or n.endswith(".jsonl")
                 or n.startswith("events.out.tfevents"))
  if marks:
    return f"it holds {marks}"
  if "config.json" not in names or not any(_EXPORT_FILE.fullmatch(n) and n != "config.json"
                                           for n in names):
    return "it has no config.json and model*.safetensors"
  return None


def save(path: str | os.PathLike, config: ModelConfig, variables: Any,
         use_ema: bool = True, overwrite: bool = False, tokenizer: Optional[Tokenizer] = None,
         dtype: str = "float32") -> None:
  """Write a directory `AutoModelForCausalLM.from_pretrained` loads (fused keys, `dtype`
  float32 or bfloat16), and with `tokenizer` one `AutoTokenizer.from_pretrained` loads
  (`tokenizer_files`; config.json then has bos = boq, eos = eoa and pad ids).

  With use_ema the `ema` weights of a training state are exported (the reference evaluates
  and releases EMA weights), else `params`; for a checkpoint on disk pass
  `native_weights.load(path, use_ema)`, which already picks them. The directory is built beside
  `path` and renamed into place (`atomic.directory`), so a crash leaves `path` as it was.
  An existing non-empty `path` is refused unless `overwrite` and it is an export
  (`export_kind`); then the files this call writes (config.json, the weights, the tokenizer
  files when a tokenizer is given) replace theirs, every stale `model*.safetensors*` shard is
  dropped, and every other file (README, a tokenizer when none is given, ...) is kept.
  """
  path = storage.path(path)
  if tokenizer is not None and tokenizer.tokenizer_vocab_size > config.vocab_size:
    raise ValueError(f"the tokenizer has {tokenizer.tokenizer_vocab_size} tokens, more than the "
                     f"model's vocab_size {config.vocab_size}: not this model's tokenizer")
  hf_config = config_to_hf(config, dtype, token_ids(tokenizer) if tokenizer else None)
  tensors = {k: v.astype(DTYPES[dtype])
             for k, v in to_hf_tensors(config, variables, use_ema).items()}
  with atomic.directory(path, overwrite=overwrite, same_kind=export_kind,
                        marker="config.json") as tmp:
    save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
    atomic.write_json(tmp / "config.json", hf_config, indent=2)
    if tokenizer is not None:
      tokenizer.save(str(tmp / "tokenizer.json"))
      for name, content in tokenizer_files(tokenizer, config).items():
        atomic.write_json(tmp / name, content, indent=2)
    kept = {}
    if path.is_dir():
      for old in path.iterdir():
        if not _EXPORT_FILE.fullmatch(old.name) and not (tmp / old.name).exists():
          shutil.copy2(old, tmp / old.name, follow_symlinks=False)
          if not old.is_symlink():
            kept[old.name] = os.stat(old).st_mode
  for name, mode in kept.items():  # the kept files are the user's: so are their modes
    os.chmod(path / name, mode)
