"""HRM and its baselines; one short file each. `LanguageModel` picks one by config.arch
from the registry (`registry.py`; the recipe for adding one: docs/architectures.md)."""

from hrm_jax.models.hrm import HRM, hl_recursion
from hrm_jax.models.lm import LanguageModel
from hrm_jax.models.registry import ARCHS, REGISTRY, model_config, spec_of
from hrm_jax.models.rins import RINS
from hrm_jax.models.transformer import Transformer
from hrm_jax.models.trm import TRM
from hrm_jax.models.ut import UT
