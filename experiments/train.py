"""Train HRM-Text (or a baseline) with sharded parameters; resumes from the workdir.

    python experiments/train.py                                  # demo config on this CPU
    python experiments/train.py --config=hrm1b --config.data.path=DIR --workdir=runs/hrm1b
    python experiments/train.py --config=demo --config.model.arch=trm --config.train.lr=3e-4

Configs live in experiments/configs/NAME.py; any field can be overridden with
--config.section.key=value. The resolved config is written to <workdir>/train_config.json and
summarised in one line; library INFO logs appear with --verbosity=0 (docs/logging.md).
Multi-host: one process per host, each with the same flags plus --distributed (cluster
detected by JAX) or --coordinator_address=HOST:PORT --num_processes=N --process_id=I.
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from absl import app, flags  # noqa: E402
import jax  # noqa: E402

from experiments import configs  # noqa: E402
from hrm_jax import cli  # noqa: E402
from hrm_jax.train import distributed  # noqa: E402

_CONFIG = configs.define_config_flag(
    f"Config name ({', '.join(configs.NAMES)}) or path to a config file.")
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Checkpoints and logs; default runs/<config name>.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Join a multi-process job whose coordinator, size and rank JAX "
    "detects (SLURM, Open MPI, Kubernetes, Cloud TPU; or JAX_COORDINATOR_ADDRESS).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (with --num_processes and "
    "--process_id: launch one process per host by hand).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank, 0..N-1.")


def config_name() -> str:
  return os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]


def main(argv):
  del argv
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           auto=_DISTRIBUTED.value or "JAX_COORDINATOR_ADDRESS" in os.environ)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  # after distributed init: they touch devices
  from hrm_jax.train import loop
  cfg = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join("runs", config_name())
  result = loop.train(cfg, workdir)  # its errors are reported by cli.run, one line each
  if result.interrupted:
    sys.exit(130)
  is_main = jax.process_index() == 0
  if is_main:
    print(f"done: {result.steps_done} steps; checkpoints in {os.path.join(workdir, 'checkpoints')}")
  if cfg.demo.show_answers and result.demo is not None and not result.preempted:
    from hrm_jax.train import demo_report
    demo_report.report(result, cfg.demo.show_answers, show=is_main)
    if is_main:
      print(demo_report.next_commands(workdir))

if __name__ == "__main__":
  cli.run(main, flags_parser=configs.parse_flags)
