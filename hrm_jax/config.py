"""Model configuration: what the weights compute (docs/reference.md#architecture).

Shape key used across the project: B batch, S sequence, D hidden, H heads, K head_dim,
M intermediate (MLP), V vocab, N layers per stack.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

INIT_TYPES = ("lecun_normal", "fixed_normal", "megatron")
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


def _head_dim(c: "ModelConfig") -> int:
  if c.num_heads <= 0 or c.hidden_size % c.num_heads:
    raise ValueError(
        f"ModelConfig: hidden_size={c.hidden_size} is not divisible by "
        f"num_heads={c.num_heads}; set head_dim explicitly or fix the sizes.")
  return c.hidden_size // c.num_heads


# Each derived field (None = derive it): the fields its rule reads, and the rule (the
# reference's formulas). `__post_init__` applies the rules in this order; `replace`
# re-derives a field when one it reads changes and the field itself is not given.
DERIVED: dict[str, tuple[tuple[str, ...], Callable[["ModelConfig"], Any]]] = {
    "intermediate_size": (("hidden_size", "expansion"),
                          lambda c: round_up(round(c.expansion * c.hidden_size * 2 / 3), 256)),
    "head_dim": (("hidden_size", "num_heads"), _head_dim),
    "embedding_scale": (("hidden_size", "init_type", "init_std"),
                        lambda c: 1.0 / c.init_stds()["in"]),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """What the weights compute. Field names follow the reference's config files.

  How it executes (dtypes, attention kernel, remat, unrolling) is `hrm_jax.execution.
  Execution`; the bp_steps warm-up is training's (`hrm_jax.train.bp_schedule`); the options
  only one baseline reads are that baseline's frozen dataclass in `options` (its model file).

  `n_layers` is the total; architectures with `half_layers` give each of their two stacks
  `n_layers // 2` layers. `intermediate_size`, `head_dim` and `embedding_scale` are derived
  (`DERIVED`) unless set (imported checkpoints may differ from the formulas).
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
  # accepted and kept in this canonical text form); n_layers there is the H stack's own layer
  # count (`stack_config("H").n_layers`).
  H_override: str = ""
  # hrm, trm, rins: recursion depth (rins reads L_cycles only).
  H_cycles: int = 2
  L_cycles: int = 3
  # Derived when None (`DERIVED`).
  intermediate_size: Optional[int] = None
  head_dim: Optional[int] = None
  embedding_scale: Optional[float] = None
  # The arch's own options: a frozen dataclass declared by its model file (e.g. ut's cycles),
  # None for archs without any; `hrm_jax.models.registry` checks the type.
  options: Any = None

  def __post_init__(self):
    object.__setattr__(self, "H_override", canonical_overrides(self.H_override))
    for name, (_, rule) in DERIVED.items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, rule(self))
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
    if self.init_type == "fixed_normal":
      std = self.init_std if self.init_std is not None else 0.02
      return {"in": std, "attn_out": std, "ff_out": std}
    if self.init_type == "lecun_normal":
      return {"in": hidden**-0.5, "attn_out": hidden**-0.5,
              "ff_out": self.intermediate_size**-0.5}
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
    """The checks every arch shares; the arch and its `options` are checked by its spec
    (`hrm_jax.models.registry.spec_of`)."""
    def bad(field, why):
      raise self.invalid(field, why)

    if self.init_type not in INIT_TYPES:
      bad("init_type", f"expected one of {INIT_TYPES}")
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
              "intermediate_size", "head_dim"):
      if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
        bad(f, "must be a positive integer")
    if self.half_layers and self.n_layers % 2:
      bad("n_layers", f"must be even: arch {self.arch!r} splits it into two stacks "
          "(half_layers=True)")
    if self.head_dim % 2:
      bad("head_dim", "must be even for rotate-half RoPE")
    if self.norm_eps <= 0:
      bad("norm_eps", "must be > 0")
    for f in ("H_cycles", "L_cycles"):
      if getattr(self, f) < 1:
        bad(f, "must be >= 1")

  def replace(self, **changes: Any) -> "ModelConfig":
    """A copy with `changes`; derived fields are recomputed unless given (`DERIVED`)."""
    fields = {f.name for f in dataclasses.fields(self)}
    unknown = sorted(set(changes) - fields)
    if unknown:
      raise ValueError(f"ModelConfig has no field(s) {unknown}; valid fields: {sorted(fields)}")
    d = {f: getattr(self, f) for f in fields}
    for derived, (deps, _) in DERIVED.items():
      if derived not in changes and any(k in changes for k in deps):
        d[derived] = None
    d.update(changes)
    return ModelConfig(**d)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: `options` as a dict of its fields (`registry.model_config_from_dict`
    reads it back)."""
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
