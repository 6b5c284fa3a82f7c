"""hrm1b: size XL HRM with the reference pretraining recipe (docs/reference.md#recipes).

    python experiments/train.py --config=hrm1b --config.data.path=/data/sampled --workdir=...
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("XL", "hrm")
  # bf16 compute; one saved input per layer and pass (remat full), O(S) attention memory:
  # 12,288-token rows fit 80 GB and v5p-16's 24,576 tokens/chip fit 95 GB; remat dots (less
  # recompute) fits 16 x H100 but not v5p-16 (benchmarks/aot_compile.py, benchmarks/README.md).
  c.model.update(dtype="bfloat16", remat_policy="full", remat_scope="layer",
                 attention_impl="chunked")
  c.checkpoint.update(every_epochs=1, keep_epochs=True)  # the reference keeps every epoch
  return c
