"""SFT recipe (docs/reference.md#recipes): continue a pretraining run's full state (params,
optimizer moments, EMA; the reference's default) or, with init_from.mode=ema_weights, its EMA
weights with a fresh optimizer (docs/warm_start.md). A checkpoint at every epoch end, all kept.

    python experiments/train.py --config=sft --config.init_from.path=PRETRAIN_WORKDIR \
        --config.data.path=/data/sft_sampled --workdir=...

32,768-token batches, 5 epochs, lr 3e-5 cosine to 0.1x, no warm-up, EMA 0.999 and the full
truncated-backprop window from the first step (bp_warmup_ratio 0).
"""

from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model = base.model_section("XL", "hrm")
  c.model.dtype = "bfloat16"
  c.train.bp_warmup_ratio = 0.0
  c.data.rows = 8
  c.data.row_len = 4096  # 8 x 4,096 = 32,768 tokens per batch
  c.train.update(lr=3e-5, lr_min_ratio=0.1, warmup_steps=0, epochs=5, ema_decay=0.999)
  c.init_from.mode = "full_state"
  c.checkpoint.update(every_epochs=1, keep_epochs=True)
  return c
