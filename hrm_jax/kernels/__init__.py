"""Attention kernels: the bottom of the dependency arrows (they import nothing of hrm_jax).

`ranges` turns segment ids and the prefix mask into per-row key/query ranges; `tiles` holds
the online-softmax tile math; `flash_xla`, `flash_gpu` (Pallas Triton) and `flash_tpu`
(Pallas Mosaic TPU) are blockwise PrefixLM attentions built on both.
"""
