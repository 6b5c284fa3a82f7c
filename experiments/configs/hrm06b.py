"""hrm06b: size L HRM (~0.6B); lr 2.5e-4 and 172,032-token batches as the reference.

    python experiments/train.py --config=hrm06b --config.data.path=/data/sampled --workdir=...
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("L", "hrm")
  c.model.dtype = "bfloat16"
  c.train.lr = 2.5e-4
  c.data.rows = 14  # 14 x 12,288 = 172,032 tokens per batch
  c.checkpoint.update(every_epochs=1, keep_epochs=True)  # the reference keeps every epoch
  return c
