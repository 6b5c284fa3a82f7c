"""hrm1b: size XL HRM with the reference pretraining recipe (REFERENCE section 4).

    python experiments/train.py --config=hrm1b --config.data.path=/data/sampled --workdir=...
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("XL", "hrm")
  # bf16 compute; the backward keeps the matmul outputs of the gradient-carrying passes
  # (remat dots: the least recompute that fits), O(S) attention memory: 12,288-token rows
  # take 41 GiB of an H100's 80 GB (benchmarks/aot_compile.py, benchmarks/README.md).
  c.model.update(dtype="bfloat16", remat_policy="dots", remat_scope="layer",
                 attention_impl="chunked")
  return c
