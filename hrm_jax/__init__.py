"""hrm_jax: HRM-Text (hierarchical recurrent LM) in JAX/Flax.

Where things are: the H/L recursion in `hrm_jax/models/hrm.py`, each baseline beside it and
all of them by name in `models/registry.py`,
layers in `layers.py`, attention kernels in `attention.py`, truncated backprop in
`truncation.py`, loss and metrics in `loss.py`, the generation engine in `generation.py` (KV-cache back end `decode.py`, cache-free `recompute_decode.py`), Hugging
Face checkpoints in `hf.py`, training checkpoints as inference weights in `native.py`.
"""

from hrm_jax import hf, native
from hrm_jax.config import SIZES, ModelConfig
from hrm_jax.generation import generate, stream
from hrm_jax.loss import IGNORE_LABEL, loss_and_metrics
from hrm_jax.models import ARCHS, LanguageModel, bp_steps_at, model_config
from hrm_jax.params import count_params

__all__ = [
    "ARCHS", "SIZES", "IGNORE_LABEL", "LanguageModel", "ModelConfig", "bp_steps_at",
    "count_params", "generate", "hf", "stream", "loss_and_metrics", "model_config",
]
