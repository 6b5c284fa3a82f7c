"""Training checkpoints as the native format: native_weights.load (EMA by default), convert.py to
Hugging Face (loaded by transformers), generate.py on a training workdir, and clear errors."""

import pathlib

import chex
import jax
import numpy as np
import pytest
import torch
import transformers

import hrm_jax
from hrm_jax import checkpoint_layout, hf, native_weights, tokenizer
from hrm_jax.train import loop
from hf_test import example_batch, hf_logits
from helpers import modes, run, tiny_model, umask
from train_loop_test import tiny_config

def contents(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


def assert_trees_equal(a, b):
  chex.assert_trees_all_equal(jax.device_get(a), jax.device_get(b))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 2-step tiny demo run: (TrainResult, workdir)."""
  demo_dir = tmp_path_factory.mktemp("demo")
  workdir = tmp_path_factory.mktemp("run")
  result = loop.train(tiny_config(demo_dir, **{"train.max_steps": 2}), str(workdir))
  assert result.steps_done == 2
  return result, workdir


def test_load_reads_ema_or_params_from_workdir_checkpoints_or_step(trained):
  result, workdir = trained
  state = jax.device_get(result.state)
  assert not np.array_equal(state.ema["embed_tokens"], state.params["embed_tokens"])
  for path in (workdir, workdir / "checkpoints", workdir / "checkpoints" / "2"):
    config, variables = native_weights.load(path)
    assert config == result.model_config
    assert sorted(variables) == ["buffers", "params"]
    assert_trees_equal(variables["params"], state.ema)
    assert_trees_equal(variables["buffers"], state.buffers)
  assert_trees_equal(native_weights.load(workdir, use_ema=False)[1]["params"], state.params)


@pytest.mark.slow  # spawns experiments/*.py
def test_convert_exports_ema_that_transformers_loads(trained, tmp_path):
  result, workdir = trained
  state = jax.device_get(result.state)
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'hf'}")
  _, variables = hf.load(tmp_path / "hf")
  assert_trees_equal(variables["params"], state.ema)
  assert_trees_equal(variables["buffers"], state.buffers)
  model, info = transformers.HrmTextForCausalLM.from_pretrained(tmp_path / "hf",
                                                                output_loading_info=True)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
  batch = example_batch(result.model_config.vocab_size)
  ours = hrm_jax.LanguageModel(result.model_config).apply(
      {"params": state.ema, "buffers": state.buffers}, batch)
  np.testing.assert_allclose(hf_logits(model.eval(), batch["inputs"], batch["prefix_mask"]),
                             np.asarray(ours), rtol=1e-4, atol=1e-4)
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'raw'}",
      "--use_ema=false")
  assert_trees_equal(hf.load(tmp_path / "raw")[1]["params"], state.params)


@pytest.mark.slow  # spawns experiments/*.py
def test_convert_export_runs_with_auto_classes_and_the_runs_tokenizer(trained, tmp_path):
  """The run's tokenizer is found from its saved config; bf16 weights; a greedy continuation
  of AutoModelForCausalLM (float32 compute) equals hrm_jax.generate on the stored weights."""
  result, workdir = trained
  out = run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'hf'}",
            "--dtype=bfloat16")
  assert "with its tokenizer" in out.stdout
  tok = tokenizer.load(result.demo.tokenizer_path)
  auto_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  prompt = tok.format_prompt("12+34=", "synth")
  assert auto_tok.decode(prompt) == tok.decode(prompt)
  assert (auto_tok.bos_token_id, auto_tok.eos_token_id) == (tok.boq_id, tok.eoa_id)
  assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").dtype == torch.bfloat16
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  ids = torch.tensor([prompt])
  with torch.no_grad():
    theirs = model.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   token_type_ids=torch.ones_like(ids), max_new_tokens=6,
                                   do_sample=False)[0, len(prompt):].tolist()
  config, variables = hf.load(tmp_path / "hf")
  assert theirs == hrm_jax.generate(config, variables, [prompt], 6, eos_id=tok.eoa_id)[0]
  out = run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'x'}",
            "--tokenizer=/nonexistent", ok=False)
  assert "no tokenizer at /nonexistent" in out.stderr
  out = run("experiments/convert.py", f"--from_hf={tmp_path / 'hf'}", f"--to={tmp_path / 'y'}",
            "--dtype=bfloat16", ok=False)
  assert "--dtype applies to --from/--to_hf only" in out.stderr


@pytest.mark.slow  # spawns experiments/*.py
def test_load_and_convert_choose_a_step(tmp_path):
  """native_weights.load(step=) and convert.py --step pick an older checkpoint; a step that is not
  there is an error listing the steps that are."""
  workdir = tmp_path / "run"
  loop.train(tiny_config(tmp_path / "demo", **{"train.max_steps": 2, "checkpoint.every_steps": 1,
                                                "checkpoint.keep": 3}), str(workdir))
  first = native_weights.load(workdir / "checkpoints" / "1")
  for path in (workdir, workdir / "checkpoints", workdir / "checkpoints" / "1"):
    config, variables = native_weights.load(path, step=1)
    assert config == first[0]
    assert_trees_equal(variables, first[1])
  assert not np.array_equal(native_weights.load(workdir)[1]["params"]["embed_tokens"],
                            first[1]["params"]["embed_tokens"])
  not_a_checkpoint = checkpoint_layout.NotACheckpointError
  with pytest.raises(not_a_checkpoint, match="no checkpoint of step 7; it has steps 1, 2"):
    native_weights.load(workdir, step=7)
  with pytest.raises(not_a_checkpoint, match="is the checkpoint of step 1, not of step 2"):
    native_weights.load(workdir / "checkpoints" / "1", step=2)
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'hf'}", "--step=1")
  assert_trees_equal(hf.load(tmp_path / "hf")[1], first[1])
  out = run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'x'}",
            "--step=9", ok=False)
  assert "no checkpoint of step 9; it has steps 1, 2" in out.stderr


@pytest.mark.slow  # spawns experiments/*.py
def test_generate_cli_on_a_training_workdir(trained):
  result, workdir = trained
  out = run("experiments/generate.py", f"--checkpoint={workdir}", "--prompt=12+34=",
            "--condition=synth", "--max_new_tokens=5")
  tok = tokenizer.load(result.demo.tokenizer_path)  # found from the saved config
  state = jax.device_get(result.state)
  ids = hrm_jax.generate(result.model_config, {"params": state.ema, "buffers": state.buffers},
                         [tok.format_prompt("12+34=", "synth")], 5, eos_id=tok.eoa_id)[0]
  expected = tok.decode([i for i in ids if i != tok.eoa_id])
  assert out.stdout.splitlines()[-1] == expected


@pytest.mark.slow  # spawns experiments/*.py
def test_weights_only_checkpoint_round_trip(trained, tmp_path):
  """convert.py --to output is read by native_weights.load, init_from and convert.py --from."""
  result, workdir = trained
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'hf'}")
  tok = tokenizer.load(result.demo.tokenizer_path)
  tok.save(str(tmp_path / "hf" / "tokenizer.json"))
  run("experiments/convert.py", f"--from_hf={tmp_path / 'hf'}", f"--to={tmp_path / 'ckpt'}")
  assert (tmp_path / "ckpt" / "tokenizer.json").exists()
  config, variables = native_weights.load(tmp_path / "ckpt")
  assert_trees_equal(variables, hf.load(tmp_path / "hf")[1])
  with pytest.raises(FileExistsError, match="exists and is not empty; refusing to replace it"):
    native_weights.save(tmp_path / "ckpt", config, variables)
  run("experiments/convert.py", f"--from={tmp_path / 'ckpt'}", f"--to_hf={tmp_path / 'back'}")
  assert_trees_equal(hf.load(tmp_path / "back")[1], variables)
  out = run("experiments/generate.py", f"--checkpoint={tmp_path / 'ckpt'}", "--prompt=7*8=",
            "--condition=synth", "--max_new_tokens=3")  # tokenizer.json copied beside it
  ids = hrm_jax.generate(config, variables, [tok.format_prompt("7*8=", "synth")], 3,
                         eos_id=tok.eoa_id)[0]
  assert out.stdout.splitlines()[-1] == tok.decode([i for i in ids if i != tok.eoa_id])


@pytest.mark.slow  # spawns experiments/*.py
def test_not_a_checkpoint_is_a_clear_error(trained, tmp_path):
  _, workdir = trained
  not_a_checkpoint = checkpoint_layout.NotACheckpointError
  with pytest.raises(not_a_checkpoint, match=f"{tmp_path}: no finished checkpoint"):
    native_weights.load(tmp_path)
  with pytest.raises(checkpoint_layout.NotACheckpointError, match="no such directory"):
    native_weights.load(tmp_path / "missing")
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={tmp_path / 'hf'}")
  with pytest.raises(checkpoint_layout.NotACheckpointError, match="is a Hugging Face directory"):
    native_weights.load(tmp_path / "hf")


@pytest.mark.slow  # spawns experiments/*.py
def test_convert_never_destroys_a_run_and_replaces_an_export_only_with_overwrite(trained,
                                                                                 tmp_path):
  """Before: --from=RUN --to_hf=RUN exited 0 and deleted the run's checkpoints and metrics."""
  _, workdir = trained
  before = contents(workdir)
  assert any(name.startswith("checkpoints/") for name in before)
  assert "metrics.jsonl" in before
  out = run("experiments/convert.py", f"--from={workdir}", f"--to_hf={workdir}", ok=False)
  assert f"{workdir} exists and is not empty; refusing to replace it" in out.stderr
  out = run("experiments/convert.py", f"--from={workdir}", f"--to_hf={workdir}", "--overwrite",
            ok=False)
  assert "is not a directory this command wrote (it has subdirectories" in out.stderr
  out = run("experiments/convert.py", f"--from_hf={tmp_path}", f"--to={workdir}", ok=False)
  assert f"{workdir} exists and is not empty" in out.stderr
  assert contents(workdir) == before
  export = tmp_path / "hf"
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={export}")
  (export / "tokenizer.json").write_text("{}")
  (export / "README.md").write_text("notes\n")
  out = run("experiments/convert.py", f"--from={workdir}", f"--to_hf={export}",
            "--use_ema=false", ok=False)
  assert "pass --overwrite" in out.stderr
  run("experiments/convert.py", f"--from={workdir}", f"--to_hf={export}", "--use_ema=false",
      "--overwrite")
  assert (export / "tokenizer.json").read_text() != "{}"  # the export's own file: rewritten
  assert (export / "README.md").read_text() == "notes\n"
  assert_trees_equal(hf.load(export)[1]["params"],
                     native_weights.load(workdir, use_ema=False)[1]["params"])
  out = run("experiments/convert.py", f"--from_hf={export}", f"--to={tmp_path / 'new'}",
            "--overwrite", ok=False)
  assert "--overwrite applies to --to_hf only" in out.stderr
  assert contents(workdir) == before


def test_weights_only_checkpoint_follows_the_umask(tmp_path):
  config, variables = tiny_model()
  with umask(0o022):
    native_weights.save(tmp_path / "ckpt", config, variables)
  assert modes(tmp_path / "ckpt") == {"dirs": {0o755}, "files": {0o644}}
