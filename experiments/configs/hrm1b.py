"""hrm1b: size XL HRM with the reference pretraining recipe (docs/reference.md#recipes).

    python experiments/train.py --config=hrm1b --config.data.path=/data/sampled --workdir=...
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("XL", "hrm")
  # bf16 compute, O(S) attention memory; remat policy, scope and micro-batches chosen by
  # compiling for the devices at hand: the least recompute that fits (hrm_jax/train/plan.py).
  c.model.update(dtype="bfloat16", remat_policy="auto", attention_impl="chunked")
  c.checkpoint.update(every_epochs=1, keep_epochs=True)  # the reference keeps every epoch
  return c
