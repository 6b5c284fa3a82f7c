"""demo (the default): a small HRM on the embedded synthetic tasks, minutes on a laptop CPU.

    python experiments/train.py
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("B", "hrm")
  c.model.update(hidden_size=96, num_heads=4, n_layers=4, max_seq_len=64, unroll_scans=True)
  # Short rows (examples are 7-34 tokens): attention over 64 positions, not 256, so a step of
  # 1,024 tokens costs about half as much. Steps are what the demo needs (docs/results.md).
  c.data.update(source="demo", rows=16, row_len=64)
  # A gradient window of 3 passes (not 5): learns as fast per step here, at 3/4 the cost.
  c.train.update(lr=2e-3, warmup_steps=50, lr_min_ratio=0.1, epochs=8, ema_decay=0.99,
                 weight_decay=0.1, loss_chunk=0, bp_max_steps=3)
  c.mesh.shape = (1, -1, 1)
  c.checkpoint.update(every_steps=500, keep=2)
  c.log.every_steps = 20
  c.demo.show_answers = 5
  # experiments/ablate.py: each run trains the demo's own schedule (total_steps 0), ~6 min on
  # a quiet 2-core CPU, evaluated at 4 evenly spaced steps (docs/ablation.md).
  c.ablate.update(total_steps=0, eval_points=4, eval_per_task=64)
  return c
