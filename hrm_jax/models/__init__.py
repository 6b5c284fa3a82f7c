"""HRM and its baselines; one short file each. `LanguageModel` picks one by config.arch."""

from hrm_jax.models.hrm import HRM, hl_recursion
from hrm_jax.models.lm import CORES, LanguageModel
from hrm_jax.models.rins import RINS
from hrm_jax.models.transformer import Transformer
from hrm_jax.models.trm import TRM
from hrm_jax.models.ut import UT
