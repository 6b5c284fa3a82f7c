"""hrm1b: size XL HRM with the reference pretraining recipe (REFERENCE section 4).

    python experiments/train.py --config=hrm1b --config.data.path=/data/sampled --workdir=...
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("XL", "hrm")
  c.model.dtype = "bfloat16"
  return c
