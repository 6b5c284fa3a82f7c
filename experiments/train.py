"""Train HRM-Text (or a baseline) with sharded parameters; resumes from the workdir.

    python experiments/train.py                                  # demo config on this CPU
    python experiments/train.py --config=hrm1b --config.data.path=DIR --workdir=runs/hrm1b
    python experiments/train.py --config=demo --config.model.arch=trm --config.train.lr=3e-4

Configs live in experiments/configs/NAME.py; any field can be overridden with
--config.section.key=value. Launch one process per host for multi-host training (pass
--distributed, or set JAX_COORDINATOR_ADDRESS).
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from absl import app, flags, logging  # noqa: E402
import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import configs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", configs.path_of("demo"),
    f"Config name ({', '.join(configs.NAMES)}) or path to a config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Checkpoints and logs; default runs/<config name>.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                 "Call jax.distributed.initialize() (multi-host).")


def config_name() -> str:
  return os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]


def main(argv):
  del argv
  if _DISTRIBUTED.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
  from hrm_jax.train import loop  # after distributed init: it touches devices
  cfg = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", config_name())
  logging.info("config:\n%s", cfg)
  result = loop.train(cfg, workdir)
  if jax.process_index() == 0:
    print(f"done: {result.steps_done} steps; checkpoints in {os.path.join(workdir, 'checkpoints')}")
    if cfg.demo.show_answers and result.demo is not None and not result.preempted:
      from hrm_jax.train import demo_report
      demo_report.print_answers(result, cfg.demo.show_answers)


if __name__ == "__main__":
  app.run(main, flags_parser=configs.parse_flags)
