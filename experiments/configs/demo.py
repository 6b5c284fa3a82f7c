"""demo (the default): a small HRM on the embedded synthetic tasks, minutes on a laptop CPU.

    python experiments/train.py
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("B", "hrm")
  c.model.update(hidden_size=128, num_heads=2, n_layers=4, max_seq_len=256, unroll_scans=True)
  c.data.update(source="demo", rows=8, row_len=256)
  c.train.update(lr=2e-3, warmup_steps=50, lr_min_ratio=0.1, epochs=4, ema_decay=0.99,
                 weight_decay=0.1, loss_chunk=0)
  c.mesh.shape = (1, -1, 1)
  c.checkpoint.update(every_steps=200, keep=2)
  c.log.every_steps = 20
  c.demo.show_answers = 5
  # experiments/ablate.py: 128 steps (~2.2 min at ~1 s/step on a quiet 2-core CPU) per run,
  # so 5 archs x 3 seeds finish in under an hour; evaluated at steps 32, 64, 96, 128.
  c.ablate.update(total_steps=128, eval_points=4, eval_per_task=64)
  return c
