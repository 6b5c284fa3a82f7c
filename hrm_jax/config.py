"""Model configuration: every field of the reference (docs/reference.md#architecture) plus dtypes.

Shape key used across the project: B batch, S sequence, D hidden, H heads, K head_dim,
M intermediate (MLP), V vocab, N layers per stack.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

INIT_TYPES = ("lecun_normal", "fixed_normal", "megatron")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("dense", "chunked", "pallas_gpu", "pallas_tpu", "auto")
REMAT_POLICIES = ("none", "full", "proj", "dots")
REMAT_SCOPES = ("layer", "pass")
# Block variants the reference's configs carry for ablations (its TransformerConfig).
ATTN_TYPES = ("prefixlm", "causal")
NORM_TYPES = ("pre", "post")
POS_EMB_TYPES = ("rope", "none")
# Fields H_override may set, with their types: the H stack's own settings. The reference
# merges any block field; these are the ones that keep the per-forward RoPE tables and
# attention mask (shared by both stacks) and the shared hidden size valid.
H_OVERRIDABLE: dict[str, type] = {"n_layers": int, "expansion": float, "norm_type": str,
                                  "norm_eps": float, "pos_emb_type": str}

# size -> (n_layers, hidden_size, num_heads); docs/reference.md#sizes.
SIZES: dict[str, tuple[int, int, int]] = {
    "B": (12, 1024, 8),
    "L": (24, 1280, 10),
    "XL": (32, 1536, 12),
    "XXL": (72, 1792, 14),
    "XXL_wide": (32, 2560, 20),
}

def round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One model. Field names follow the reference's config files.

  `n_layers` is the total; architectures with `half_layers` give each of their two stacks
  `n_layers // 2` layers. `intermediate_size` and `head_dim` are derived from the reference
  formulas unless set (imported checkpoints may differ from the formulas).
  """

  arch: str = "hrm"
  n_layers: int = 32
  hidden_size: int = 1536
  num_heads: int = 12
  expansion: float = 4.0
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_seq_len: int = 4096
  vocab_size: int = 65536
  init_type: str = "lecun_normal"
  init_std: Optional[float] = None
  half_layers: bool = True
  # Block variants (the reference's ablation switches). attn_type "prefixlm": the prompt is
  # bidirectional, the response causal; "causal": causal everywhere (prefix_mask ignored).
  # norm_type "pre": x + f(rms(x)) and one RMSNorm after the stack; "post": rms(x + f(x)) and
  # no final norm. pos_emb_type "rope" or "none" (no position signal but the causal mask).
  attn_type: str = "prefixlm"
  norm_type: str = "pre"
  pos_emb_type: str = "rope"
  # hrm, rins: the H stack's own settings, "field=value,..." over H_OVERRIDABLE (a mapping is
  # accepted and kept in this canonical text form); n_layers is the H stack's layer count.
  H_override: str = ""
  # hrm, trm, trm_match_recurrence: recursion depth.
  H_cycles: int = 2
  L_cycles: int = 3
  # hrm: truncated-backprop warm-up (bp_steps goes bp_min -> bp_max over the first ratio).
  bp_min_steps: int = 2
  bp_max_steps: int = 5
  bp_warmup_ratio: float = 0.2
  # trm: fixed gradient windows (number of trailing H and L passes with gradient).
  H_bp_steps: int = 1
  L_bp_steps: int = 1
  # rins: trailing L cycles with gradient.
  L_bp_cycles: int = 4
  # ut: cycles of its single stack and how many trailing ones carry gradient.
  cycles: int = 4
  bp_cycles: int = 2
  # Derived when None.
  intermediate_size: Optional[int] = None
  head_dim: Optional[int] = None
  embedding_scale: Optional[float] = None
  # Numerics and implementation.
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "dense"
  attention_chunk: int = 512  # tile rows of the blockwise attention_impls (hrm_jax/attention.py)
  # What a rematerialised unit keeps for the backward pass (none = no remat; full = only its
  # input; proj = also its projection outputs gqkv, gated attention and gate_up; dots =
  # every matmul output without batch dimensions), and the units: each "layer" of a stack, or also
  # each whole "pass" of a stack through the recursion (nested: fewer saved activations, one
  # more stack forward per gradient-carrying pass).
  remat_policy: str = "none"
  remat_scope: str = "layer"
  # Unroll the layer and recursion scans in the compiled program: faster for small models on
  # CPU (no per-iteration slicing of stacked weights), slower to compile for big ones.
  # None = by backend and size (`hrm_jax.layers.unroll_scans`).
  unroll_scans: Optional[bool] = None

  def __post_init__(self):
    object.__setattr__(self, "H_override", canonical_overrides(self.H_override))
    if self.intermediate_size is None:
      object.__setattr__(
          self, "intermediate_size",
          round_up(round(self.expansion * self.hidden_size * 2 / 3), 256))
    if self.head_dim is None:
      if self.num_heads <= 0 or self.hidden_size % self.num_heads:
        raise ValueError(
            f"ModelConfig: hidden_size={self.hidden_size} is not divisible by "
            f"num_heads={self.num_heads}; set head_dim explicitly or fix the sizes.")
      object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
    if self.embedding_scale is None:
      object.__setattr__(self, "embedding_scale", 1.0 / self.init_stds()["in"])
    self.validate()

  # --- derived ---------------------------------------------------------------------------
  @property
  def layers_per_stack(self) -> int:
    return self.n_layers // 2 if self.half_layers else self.n_layers

  @property
  def H_overrides(self) -> dict[str, Any]:
    """H_override as a dict of typed values."""
    return parse_overrides(self.H_override)

  def stack_config(self, name: str) -> "ModelConfig":
    """The config of stack `name`'s blocks: "H" with H_override applied, else this config.

    The stack's own layer count becomes its n_layers (half_layers off), so per-stack formulas
    (megatron init, FLOPs) read it as for any single stack."""
    overrides = self.H_overrides if name == "H" else {}
    if not overrides:
      return self
    return self.replace(**{"n_layers": self.layers_per_stack, "half_layers": False,
                           "H_override": "", **overrides})

  def init_stds(self) -> dict[str, float]:
    """Init std of input projections, attention output and MLP output (reference formulas)."""
    hidden = self.hidden_size
    inter = self.intermediate_size or round_up(round(self.expansion * hidden * 2 / 3), 256)
    if self.init_type == "fixed_normal":
      std = self.init_std if self.init_std is not None else 0.02
      return {"in": std, "attn_out": std, "ff_out": std}
    if self.init_type == "lecun_normal":
      return {"in": hidden**-0.5, "attn_out": hidden**-0.5, "ff_out": inter**-0.5}
    if self.init_type == "megatron":
      in_std = self.init_std if self.init_std is not None else hidden**-0.5
      out = in_std / math.sqrt(2.0 * self.layers_per_stack)
      return {"in": in_std, "attn_out": out, "ff_out": out}
    raise ValueError(
        f"ModelConfig.init_type={self.init_type!r} is unknown; expected one of {INIT_TYPES}.")

  # --- validation ------------------------------------------------------------------------
  def invalid(self, field: str, why: str) -> ValueError:
    """The error for a bad value of `field`, naming it."""
    return ValueError(f"ModelConfig.{field}={getattr(self, field)!r}: {why}")

  def validate(self) -> None:
    """The checks every arch shares; an arch's own fields are checked by its spec
    (`hrm_jax.models.registry.spec_of`)."""
    def bad(field, why):
      raise self.invalid(field, why)

    if self.init_type not in INIT_TYPES:
      bad("init_type", f"expected one of {INIT_TYPES}")
    for f in ("dtype", "param_dtype"):
      if getattr(self, f) not in DTYPES:
        bad(f, f"expected one of {DTYPES}")
    if self.attention_impl not in ATTENTION_IMPLS:
      bad("attention_impl", f"expected one of {ATTENTION_IMPLS}")
    if self.remat_policy not in REMAT_POLICIES:
      bad("remat_policy", f"expected one of {REMAT_POLICIES}")
    if self.remat_scope not in REMAT_SCOPES:
      bad("remat_scope", f"expected one of {REMAT_SCOPES}")
    for f, allowed in (("attn_type", ATTN_TYPES), ("norm_type", NORM_TYPES),
                       ("pos_emb_type", POS_EMB_TYPES)):
      if getattr(self, f) not in allowed:
        bad(f, f"expected one of {allowed}")
    if self.H_override:
      try:
        self.stack_config("H")  # the H stack's own values, checked as a config of one stack
      except ValueError as e:
        bad("H_override", f"the H stack it makes is invalid: {e}")
    for f in ("n_layers", "hidden_size", "num_heads", "vocab_size", "max_seq_len",
              "intermediate_size", "head_dim", "attention_chunk"):
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        bad(f, "must be a positive integer")
    if self.half_layers and self.n_layers % 2:
      bad("n_layers", f"must be even: arch {self.arch!r} splits it into two stacks "
          "(half_layers=True)")
    if self.head_dim % 2:
      bad("head_dim", "must be even for rotate-half RoPE")
    if self.norm_eps <= 0:
      bad("norm_eps", "must be > 0")
    for f in ("H_cycles", "L_cycles", "cycles"):
      if getattr(self, f) < 1:
        bad(f, "must be >= 1")
    if not 1 <= self.bp_min_steps <= self.bp_max_steps:
      raise ValueError(
          f"ModelConfig: need 1 <= bp_min_steps ({self.bp_min_steps}) <= bp_max_steps "
          f"({self.bp_max_steps}).")
    if not 0.0 <= self.bp_warmup_ratio <= 1.0:
      bad("bp_warmup_ratio", "must be in [0, 1]")

  def replace(self, **changes: Any) -> "ModelConfig":
    """A copy with `changes`; derived fields are recomputed unless given."""
    fields = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(changes) - fields)
    if unknown:
      raise ValueError(f"ModelConfig has no field(s) {unknown}; valid fields: {sorted(fields)}")
    d = dataclasses.asdict(self)
    size_fields = ("hidden_size", "num_heads", "expansion", "init_type", "init_std")
    for derived, deps in (("intermediate_size", ("hidden_size", "expansion")),
                          ("head_dim", ("hidden_size", "num_heads")),
                          ("embedding_scale", size_fields + ("intermediate_size",))):
      if derived not in changes and any(k in changes for k in deps):
        d[derived] = None
    d.update(changes)
    return ModelConfig(**d)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def parse_overrides(text: str) -> dict[str, Any]:
  """"n_layers=2,norm_type=post" -> {"n_layers": 2, "norm_type": "post"} (H_OVERRIDABLE)."""
  out: dict[str, Any] = {}
  for item in filter(None, (part.strip() for part in text.split(","))):
    key, eq, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not eq or key not in H_OVERRIDABLE:
      raise ValueError(
          f"ModelConfig.H_override={text!r}: {item!r} is not field=value with a field of "
          f"{sorted(H_OVERRIDABLE)} (the H stack shares the hidden size, RoPE tables and mask)")
    if key in out:
      raise ValueError(f"ModelConfig.H_override={text!r}: {key} is given twice")
    try:
      out[key] = H_OVERRIDABLE[key](value)
    except ValueError:
      raise ValueError(f"ModelConfig.H_override={text!r}: {key}={value!r} is not a "
                       f"{H_OVERRIDABLE[key].__name__}") from None
  return out


def canonical_overrides(value: Any) -> str:
  """H_override in its canonical text form (sorted field=value), from text or a mapping."""
  if value is None:
    return ""
  if not isinstance(value, str):
    if not hasattr(value, "items"):
      raise ValueError(f"ModelConfig.H_override={value!r}: expected 'field=value,...' or a "
                       "mapping")
    value = ",".join(f"{k}={v}" for k, v in value.items())
  return ",".join(f"{k}={v}" for k, v in sorted(parse_overrides(value).items()))


def check_data_fits(config: ModelConfig, data: Any) -> None:
  """Refuse training data with an example longer than the model's context: its positions
  past `max_seq_len` would train a model that is then refused (or wrong) at inference.

  `data` is a `hrm_jax.data.SampledData` (its `path`, `num_epochs`, `examples(e).lengths`).
  Packed rows (`data.row_len`) may be longer: positions restart in every example.
  """
  for epoch in range(data.num_epochs):
    lengths = data.examples(epoch).lengths
    if len(lengths) and int(lengths.max()) > config.max_seq_len:
      i = int(lengths.argmax())
      raise ValueError(
          f"{data.path}: epoch_{epoch} example {i} is {int(lengths[i])} tokens, longer than the "
          f"model's max_seq_len={config.max_seq_len}; raise --config.model.max_seq_len or "
          f"prepare the data with --max_seq_len={config.max_seq_len}")
