"""Training config values checked before any work, each error naming its flag."""

import pytest

from experiments import configs
from hrm_jax import errors
from hrm_jax.train import config_check


@pytest.mark.parametrize("key,value,message", [
    ("checkpoint.keep", 0, "--config.checkpoint.keep=0: expected an integer >= 1"),
    ("checkpoint.every_steps", -1, "--config.checkpoint.every_steps=-1: expected an integer "
     ">= 0 (0 = no step checkpoints)"),
    ("train.epochs", 0, "--config.train.epochs=0: expected an integer >= 1"),
    ("log.every_steps", 0, "--config.log.every_steps=0"),
    ("data.row_len", -5, "--config.data.row_len=-5"),
])
def test_out_of_range_values_are_config_errors(key, value, message):
  cfg = configs.get("demo")
  section, field = key.split(".")
  cfg[section][field] = value
  with pytest.raises(errors.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_check.check(cfg)


def test_every_named_config_passes_and_zero_cadences_mean_off():
  for name in configs.NAMES:
    config_check.check(configs.get(name))
  cfg = configs.get("demo")
  cfg.checkpoint.every_steps = 0
  config_check.check(cfg)


def test_moved_keys_name_their_new_home():
  """The bp_steps warm-up moved from the model section to train (issue 30)."""
  with pytest.raises(ValueError, match=r"--config.model.bp_warmup_ratio is now --config.train."
                     r"bp_warmup_ratio \(the bp_steps warm-up is part of training\)"):
    configs.resolve_argv(["train.py", "--config=sft", "--config.model.bp_warmup_ratio=0.1"])
  configs.resolve_argv(["train.py", "--config=sft", "--config.train.bp_warmup_ratio=0.1"])


def test_override_keys_are_checked_against_a_config_file_too(tmp_path):
  """Before: `--config=FILE --config.train.stepz=5` ended in `"'stepz'"`."""
  path = configs.path_of("demo")
  with pytest.raises(ValueError, match="unknown config key 'train.stepz'; did you mean"):
    configs.resolve_argv(["train.py", f"--config={path}", "--config.train.stepz=5"])
  with pytest.raises(ValueError, match="no such config file"):
    configs.resolve_argv(["train.py", f"--config={tmp_path / 'nope.py'}"])
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config():\n  return 1 / 0\n")
  with pytest.raises(ValueError, match="cannot load it \\(ZeroDivisionError"):
    configs.resolve_argv(["train.py", f"--config={broken}", "--config.train.lr=1"])


def test_microbatches_must_divide_the_rows():
  cfg = configs.get("demo")
  cfg.train.microbatches = 3
  with pytest.raises(errors.ConfigError, match="microbatches=3 does not divide "
                     f"--config.data.rows={cfg.data.rows}"):
    config_check.check(cfg)


def test_a_data_path_on_the_demo_config_is_not_ignored():
  """Before: `--config.data.path=DIR` on the demo config trained on the demo data."""
  cfg = configs.get("demo")
  cfg.data.path = "s3://bucket/sampled"
  with pytest.raises(errors.ConfigError, match="add --config.data.source=path"):
    config_check.check(cfg)
  cfg.data.source = "path"
  config_check.check(cfg)
