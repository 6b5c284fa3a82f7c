"""Where a training run's numbers go: metrics.jsonl, Weights & Biases (offline mode: nothing
leaves the machine) and the resolved config in the workdir (hrm_jax/train/metrics.py,
hrm_jax/train/loop.py)."""

import json
import pathlib
import struct
import sys

import pytest
from wandb.proto import wandb_internal_pb2

from hrm_jax.train import loop
from hrm_jax.train import metrics as metrics_lib
from train_loop_test import read_metrics, tiny_config

BLOCK, HEADER = 32768, 7  # the .wandb file: LevelDB-log blocks after a 7-byte ":W&B" header


def wandb_records(run_dir: pathlib.Path) -> list:
  """The protobuf Records of an offline W&B run, read from its run-<id>.wandb file (a
  LevelDB log: records of [crc32, length, type] + payload, split across 32 KiB blocks)."""
  (path,) = run_dir.glob("run-*.wandb")
  data = path.read_bytes()
  assert data[:4] == b":W&B", path
  records, pending, pos = [], b"", HEADER
  while pos + HEADER <= len(data):
    left = BLOCK - pos % BLOCK
    if left < HEADER:  # a block's tail too short for a record header is zero padding
      pos += left
      continue
    _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
    pending += data[pos + HEADER:pos + HEADER + length]
    pos += HEADER + length
    if kind in (1, 4):  # FULL or LAST: a whole record
      record = wandb_internal_pb2.Record()
      record.ParseFromString(pending)
      records.append(record)
      pending = b""
  return records


def history(records) -> list[dict]:
  return [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
           for item in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("demo")


def test_wandb_offline_run_holds_the_logged_metrics_and_resumes_the_same_run(
    demo_dir, tmp_path, monkeypatch, capsys):
  for var, value in {"WANDB_MODE": "offline", "WANDB_DIR": tmp_path / "wandb_dir",
                     "WANDB_CONFIG_DIR": tmp_path / "wandb_config",
                     "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
                     "WANDB_DATA_DIR": tmp_path / "wandb_data"}.items():
    monkeypatch.setenv(var, str(value))
  workdir = tmp_path / "run"
  log = {"log.wandb_project": "hrm-test", "log.wandb_run_name": "tiny"}
  cfg = tiny_config(demo_dir, **{"train.max_steps": 2}, **log)
  result = loop.train(cfg, str(workdir))
  loop.train(tiny_config(demo_dir, **{"train.max_steps": 3}, **log), str(workdir))  # resumes

  run_id = (workdir / metrics_lib.WANDB_ID_FILE).read_text().strip()
  runs = sorted((workdir / "wandb").glob(f"offline-run-*-{run_id}"))
  assert len(runs) == 2, list((workdir / "wandb").iterdir())  # one W&B run, started twice
  rows = read_metrics(workdir)
  assert [r["step"] for r in rows] == [1, 2, 3]
  logged = [h for run in runs for h in history(wandb_records(run))]
  assert [h["_step"] for h in logged] == [1, 2, 3]
  for row, h in zip(rows, logged):
    numbers = {f"train/{k}": v for k, v in row.items() if k != "step"}
    assert {k: h[k] for k in numbers} == pytest.approx(numbers, rel=1e-6)
  first = wandb_records(runs[0])
  (run,) = [r.run for r in first if r.WhichOneof("record_type") == "run"]
  assert (run.run_id, run.project, run.display_name) == (run_id, "hrm-test", "tiny")
  config = {item.key: json.loads(item.value_json) for item in run.config.update}
  assert config["model_config"]["hidden_size"] == result.model_config.hidden_size == 32
  assert config["config"]["log"]["wandb_project"] == "hrm-test"

  saved = json.loads((workdir / loop.CONFIG_FILE).read_text())
  assert saved["config"]["train"]["max_steps"] == 3  # the latest start's config
  assert saved["model_config"] == json.loads(json.dumps(result.model_config.to_dict()))
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("hrm: 0.") and f"config: {workdir / loop.CONFIG_FILE}" in out[0]


def test_a_foreign_config_file_is_never_replaced(demo_dir, tmp_path):
  (tmp_path / loop.CONFIG_FILE).write_text('{"mine": 1}\n')
  with pytest.raises(FileExistsError, match=f"{loop.CONFIG_FILE} exists and is not a training "
                     "config written by hrm_jax"):
    loop.train(tiny_config(demo_dir, **{"train.max_steps": 1}), str(tmp_path))
  assert (tmp_path / loop.CONFIG_FILE).read_text() == '{"mine": 1}\n'


def test_wandb_project_without_wandb_installed_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
  with pytest.raises(ImportError, match=r"pip install 'hrm_jax\[wandb\]'"):
    metrics_lib.MetricWriter(str(tmp_path), wandb_project="p")


def test_a_run_started_again_from_step_0_starts_a_fresh_metrics_file(tmp_path):
  """Before: a restart from scratch (checkpoints deleted) appended to the old rows, so
  metrics.jsonl held each step twice."""
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in (1, 2, 3)))
  writer = metrics_lib.MetricWriter(str(tmp_path), resume_step=0)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert [json.loads(l) for l in path.read_text().splitlines()] == [{"step": 1, "loss": 1.0}]
