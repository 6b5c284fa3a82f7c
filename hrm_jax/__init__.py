"""hrm_jax: HRM-Text (hierarchical recurrent LM) in JAX/Flax.

Where things are: the H/L recursion in `hrm_jax/models/hrm.py`, each baseline beside it and
all of them by name in `models/registry.py`, what the weights compute in `config.py` and how
the model runs in `execution.py`, layers in `layers.py`, the KV cache in `kv_cache.py`,
attention kernels in `attention.py`, truncated backprop in `truncation.py`, loss and metrics
in `loss.py`, the generation engine in `generation.py` (KV-cache back end `decode.py`,
cache-free `recompute_decode.py`), Hugging Face checkpoints in `hf.py`, training checkpoints
as inference weights in `native_weights.py`.

Every subpackage and module is an attribute after `import hrm_jax` (`hrm_jax.optim.adam_atan2`,
`hrm_jax.data.open_sampled`, `hrm_jax.train.loop`); those the names below do not pull in
(training, data, evaluation: optax, grain, math-verify) are imported on first use (PEP 562).
"""

from hrm_jax import hf, lazy, native_weights
from hrm_jax.config import SIZES, ModelConfig
from hrm_jax.execution import Execution
from hrm_jax.generation import generate, stream
from hrm_jax.loss import IGNORE_LABEL, loss_and_metrics
from hrm_jax.models import ARCHS, LanguageModel, model_config
from hrm_jax.params import count_params

SUBMODULES, __getattr__, __dir__ = lazy.submodules(__name__, __path__, globals())

__all__ = [
    "ARCHS", "SIZES", "IGNORE_LABEL", "Execution", "LanguageModel", "ModelConfig",
    "count_params", "generate", "hf", "stream", "loss_and_metrics", "model_config",
]
