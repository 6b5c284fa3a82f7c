"""hrm_jax.hf against transformers.HrmTextForCausalLM (float32, tolerance 1e-4): import,
export, exact round trip, the split/sharded/bf16 layouts, and clear errors."""

import dataclasses
import json
import os
import stat

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file
from safetensors.torch import save_file as torch_save_file

import hrm_jax
from hrm_jax import hf, tokenizer
from hrm_jax.data import demo
from helpers import modes, pack_rows, umask

TOL = dict(rtol=1e-4, atol=1e-4)

# Shapes that do not follow the preset formulas, H/L other than 2/3.
HF_CONFIGS = {
    "h2l3": dict(hidden_size=32, num_attention_heads=2, head_dim=16, intermediate_size=96,
                 num_hidden_layers=2, H_cycles=2, L_cycles=3),
    "h3l2_odd_shapes": dict(hidden_size=32, num_attention_heads=2, head_dim=24,
                            intermediate_size=72, num_hidden_layers=1, H_cycles=3, L_cycles=2),
    "h1l1_4heads": dict(hidden_size=48, num_attention_heads=4, head_dim=8, intermediate_size=40,
                        num_hidden_layers=3, H_cycles=1, L_cycles=1),
}


def hf_model(name: str, seed: int = 0, vocab_size: int = 67) -> transformers.HrmTextForCausalLM:
  """A random HF model with O(1) logits and a non-zero z_L_init."""
  torch.manual_seed(seed)
  cfg = transformers.HrmTextConfig(vocab_size=vocab_size, rope_parameters={"rope_theta": 500.0,
                                   "rope_type": "default"}, **HF_CONFIGS[name])
  model = transformers.HrmTextForCausalLM(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0, p.shape[-1] ** -0.5 if p.ndim == 2 else 1.0)
  return model


def hf_logits(model, inputs_BxS: np.ndarray, prompt_BxS: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(inputs_BxS, dtype=torch.long),
                 token_type_ids=torch.tensor(prompt_BxS, dtype=torch.long)).logits.numpy()


def example_batch(vocab: int) -> dict:
  """Two full rows (no padding), prompts of 5 and 9 tokens."""
  rng = np.random.default_rng(1)
  return pack_rows([[(list(rng.integers(1, vocab, 5)), list(rng.integers(1, vocab, 7)))],
                    [(list(rng.integers(1, vocab, 9)), list(rng.integers(1, vocab, 3)))]], 12)


@pytest.mark.parametrize("name", HF_CONFIGS)
def test_imported_logits_match_transformers(name, tmp_path):
  model = hf_model(name)
  model.save_pretrained(tmp_path)
  config, variables = hf.load(tmp_path)
  assert config.layers_per_stack == HF_CONFIGS[name]["num_hidden_layers"]
  assert (config.head_dim, config.intermediate_size) == (HF_CONFIGS[name]["head_dim"],
                                                         HF_CONFIGS[name]["intermediate_size"])
  assert np.abs(variables["buffers"]["core"]["z_L_init"]).max() > 0.1
  batch = example_batch(config.vocab_size)
  ours = np.asarray(hrm_jax.LanguageModel(config).apply(variables, batch))
  ref = hf_logits(model, batch["inputs"], batch["prefix_mask"])
  assert np.abs(ref).max() > 1.0
  np.testing.assert_allclose(ours, ref, **TOL)


@pytest.mark.parametrize("H_cycles,L_cycles", [(2, 3), (3, 1)])
def test_exported_model_gives_same_logits_in_transformers(H_cycles, L_cycles, tmp_path):
  config = hrm_jax.model_config("B", "hrm", hidden_size=32, num_heads=2, n_layers=4,
                                vocab_size=53, H_cycles=H_cycles, L_cycles=L_cycles)
  batch = example_batch(config.vocab_size)
  variables = hrm_jax.LanguageModel(config).init(jax.random.PRNGKey(2), batch)
  hf.save(tmp_path / "out", config, variables)
  model = transformers.HrmTextForCausalLM.from_pretrained(tmp_path / "out").eval()
  ours = np.asarray(hrm_jax.LanguageModel(config).apply(variables, batch))
  np.testing.assert_allclose(hf_logits(model, batch["inputs"], batch["prefix_mask"]), ours, **TOL)


def test_causal_export_runs_in_transformers_without_its_prefix(tmp_path):
  config = hrm_jax.model_config("B", "hrm", hidden_size=32, num_heads=2, n_layers=4,
                                vocab_size=53, attn_type="causal")
  batch = example_batch(config.vocab_size)
  variables = hrm_jax.LanguageModel(config).init(jax.random.PRNGKey(2), batch)
  hf.save(tmp_path / "out", config, variables)
  assert json.loads((tmp_path / "out" / "config.json").read_text())["prefix_lm"] is False
  assert hf.load(tmp_path / "out")[0] == config
  model = transformers.HrmTextForCausalLM.from_pretrained(tmp_path / "out").eval()
  ours = np.asarray(hrm_jax.LanguageModel(config).apply(variables, batch))
  np.testing.assert_allclose(hf_logits(model, batch["inputs"], batch["prefix_mask"]), ours, **TOL)


@pytest.mark.parametrize("option", [dict(norm_type="post"), dict(pos_emb_type="none"),
                                    dict(H_override="n_layers=1")])
def test_options_transformers_cannot_express_are_refused(option, tmp_path):
  config = hrm_jax.model_config("B", "hrm", hidden_size=32, num_heads=2, n_layers=4,
                                vocab_size=53, **option)
  variables = hrm_jax.LanguageModel(config).init(jax.random.PRNGKey(2), example_batch(53))
  field = next(iter(option))
  with pytest.raises(ValueError, match=f"ModelConfig.{field}=.*cannot be expressed"):
    hf.save(tmp_path / "out", config, variables)
  assert not (tmp_path / "out").exists()


def test_the_export_is_an_allow_list_of_every_model_config_field(monkeypatch):
  """Every ModelConfig field is placed once (exported, fixed to HrmText's value, or shaping
  fresh weights only); one that is not, as a new block option would be, is refused."""
  placed = list(hf.EXPORTED) + list(hf.FIXED) + list(hf.INIT_ONLY)
  assert sorted(placed) == sorted(f.name for f in dataclasses.fields(hrm_jax.ModelConfig))
  config = hrm_jax.model_config("B", "hrm", hidden_size=32, num_heads=2, n_layers=4)
  hf.config_to_hf(config)
  monkeypatch.setattr(hf, "EXPORTED", tuple(f for f in hf.EXPORTED if f != "rope_theta"))
  with pytest.raises(ValueError, match="ModelConfig.rope_theta is not on hrm_jax/hf.py's "
                     "allow-list"):
    hf.config_to_hf(config)


def test_import_export_round_trip_is_exact(tmp_path):
  hf_model("h3l2_odd_shapes").save_pretrained(tmp_path / "a")
  config, variables = hf.load(tmp_path / "a")
  hf.save(tmp_path / "b", config, variables)
  a, b = load_file(tmp_path / "a" / hf.WEIGHTS), load_file(tmp_path / "b" / hf.WEIGHTS)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert hf.load(tmp_path / "b")[0] == config
  assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["config.json", hf.WEIGHTS]


def test_export_follows_the_umask(tmp_path):
  config, variables = hf.load(_corrupt(tmp_path / "a"))
  with umask(0o022):
    hf.save(tmp_path / "out", config, variables)
  assert modes(tmp_path / "out") == {"dirs": {0o755}, "files": {0o644}}
  with umask(0o077):
    hf.save(tmp_path / "private", config, variables)
  assert modes(tmp_path / "private") == {"dirs": {0o700}, "files": {0o600}}


def test_export_onto_an_export_needs_overwrite_and_keeps_the_other_files(tmp_path):
  """Before: a second save replaced the directory whole (tokenizer.json, README.md gone)."""
  config, old = hf.load(_corrupt(tmp_path / "a", seed=1))
  _, new = hf.load(_corrupt(tmp_path / "b", seed=2))
  out = tmp_path / "out"
  hf.save(out, config, old)
  (out / "README.md").write_text("my notes\n")
  os.chmod(out / "README.md", 0o600)
  (out / "tokenizer.json").write_text("{}")
  (out / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(FileExistsError, match=f"{out} exists and is not empty.*--overwrite"):
    hf.save(out, config, new)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  hf.save(out, config, new, overwrite=True)
  assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", hf.WEIGHTS,
                                                   "tokenizer.json"]
  assert (out / "README.md").read_text() == "my notes\n"
  assert (out / "tokenizer.json").read_text() == "{}"
  assert stat.S_IMODE(os.stat(out / "README.md").st_mode) == 0o600
  jax.tree_util.tree_map(np.testing.assert_array_equal, hf.load(out)[1], new)


@pytest.mark.parametrize("mark", ["checkpoints/", "metrics.jsonl", "events.out.tfevents.1.host",
                                  "epoch_0/", "input.jsonl", ".git/"])
def test_overwrite_never_replaces_what_is_not_an_export(mark, tmp_path):
  config, variables = hf.load(_corrupt(tmp_path / "a"))
  run = tmp_path / "run"
  hf.save(run, config, variables)  # weights and config, plus what marks a run or data
  (run / mark.rstrip("/")).mkdir() if mark.endswith("/") else (run / mark).write_text("keep")
  before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
  with pytest.raises(FileExistsError, match="not a directory this command wrote"):
    hf.save(run, config, variables, overwrite=True)
  assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
  with pytest.raises(FileExistsError, match="exists and is not a directory"):
    hf.save(tmp_path / "a" / "config.json", config, variables, overwrite=True)


def test_split_names_sharded_files_and_bf16_load_the_same(tmp_path):
  model = hf_model("h2l3")
  model.save_pretrained(tmp_path / "fused")
  _, fused = hf.load(tmp_path / "fused")
  (tmp_path / "split").mkdir()
  (tmp_path / "split" / "config.json").write_text((tmp_path / "fused" / "config.json").read_text())
  state = model.state_dict()
  assert any(".self_attn.q_proj." in k for k in state)  # transformers' own split names
  torch_save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "split" / hf.WEIGHTS)
  model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
  assert (tmp_path / "sharded" / hf.INDEX).exists()
  for other in ("split", "sharded"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, hf.load(tmp_path / other)[1], fused)
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
  _, bf16 = hf.load(tmp_path / "bf16")
  rounded = jax.tree_util.tree_map(lambda a: np.asarray(a, jax.numpy.bfloat16).astype(np.float32),
                                   fused)
  jax.tree_util.tree_map(np.testing.assert_array_equal, bf16, rounded)


def demo_tokenizer() -> tokenizer.Tokenizer:
  """The demo data's character-level tokenizer with the default HRM-Text specials."""
  tok = demo.build_tokenizer()
  return tokenizer.Tokenizer(tok, tokenizer.TokenizerInfo.default(
      "tokenizer.json", tok.get_vocab_size(with_added_tokens=True)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_runs_with_auto_classes_and_its_tokenizer(dtype, tmp_path):
  """AutoTokenizer + AutoModelForCausalLM on an hf.save export: the ids, logits (tolerance
  1e-4, float32 compute on the stored weights) and a greedy continuation of hrm_jax."""
  tok = demo_tokenizer()
  hf_model("h2l3", vocab_size=tok.vocab_size).save_pretrained(tmp_path / "src")
  config, variables = hf.load(tmp_path / "src")
  hf.save(tmp_path / "out", config, variables, tokenizer=tok, dtype=dtype)
  config, variables = hf.load(tmp_path / "out")  # what was stored (bf16-rounded for bfloat16)
  auto_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
  prompt = tok.format_prompt("12+34=", "synth")
  assert auto_tok("12+34=", add_special_tokens=False)["input_ids"] == tok.encode_text("12+34=")
  assert auto_tok.convert_tokens_to_ids(tokenizer.DEFAULT_CONDITIONS["synth"]) == prompt[1]
  assert (auto_tok.bos_token_id, auto_tok.eos_token_id, auto_tok.pad_token_id) == (
      tok.boq_id, tok.eoa_id, 0)
  stored = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
  assert stored.dtype == {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  assert (stored.config.bos_token_id, stored.config.eos_token_id,
          stored.config.pad_token_id) == (tok.boq_id, tok.eoa_id, 0)
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out",
                                                            dtype=torch.float32).eval()
  batch = example_batch(config.vocab_size)
  np.testing.assert_allclose(hf_logits(model, batch["inputs"], batch["prefix_mask"]),
                             hrm_jax.LanguageModel(config).apply(variables, batch), **TOL)
  ids = torch.tensor([prompt])
  with torch.no_grad():
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         token_type_ids=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
  ours = hrm_jax.generate(config, variables, [prompt], 8, eos_id=tok.eoa_id)[0]
  assert out[0, len(prompt):].tolist() == ours
  assert len(set(ours)) > 1


def test_overwrite_replaces_the_tokenizer_it_writes_and_keeps_the_rest(tmp_path):
  tok = demo_tokenizer()
  hf_model("h2l3", vocab_size=tok.vocab_size).save_pretrained(tmp_path / "a")
  config, variables = hf.load(tmp_path / "a")
  out = tmp_path / "out"
  hf.save(out, config, variables)
  (out / "tokenizer.json").write_text("{}")
  (out / "README.md").write_text("notes\n")
  hf.save(out, config, variables, overwrite=True)  # no tokenizer given: the user's is kept
  assert (out / "tokenizer.json").read_text() == "{}"
  hf.save(out, config, variables, overwrite=True, tokenizer=tok, dtype="bfloat16")
  assert tokenizer.load(str(out)).encode_text("7*8=") == tok.encode_text("7*8=")
  assert (out / "README.md").read_text() == "notes\n"
  assert sorted(p.name for p in out.iterdir()) == sorted(
      ["README.md", "config.json", hf.WEIGHTS, "tokenizer.json", *hf.tokenizer_files(tok, config)])
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
  with pytest.raises(ValueError, match="dtype='float16'; expected one of"):
    hf.save(tmp_path / "f16", config, variables, dtype="float16")
  small, small_variables = hf.load(_corrupt(tmp_path / "small"))  # vocab_size 67
  with pytest.raises(ValueError, match="the tokenizer has 105 tokens, more than the model's "
                     "vocab_size 67"):
    hf.save(tmp_path / "v", small, small_variables, tokenizer=tok)


def reference_export(model, path, **config_edits):
  """`model` laid out as the reference's conversion/convert_to_hf.py writes it: bf16 fused
  weights, num_hidden_layers = the layers of both stacks, top-level rope_theta, no
  num_layers_per_stack / rope_parameters, its extra keys (L_bp_steps, token ids)."""
  model.to(torch.bfloat16).save_pretrained(path)
  c = model.config
  n = c.num_layers_per_stack
  cfg = {"model_type": "hrm_text", "architectures": ["HrmTextForCausalLM"],
         "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
         "intermediate_size": c.intermediate_size, "num_hidden_layers": 2 * n,
         "num_attention_heads": c.num_attention_heads,
         "num_key_value_heads": c.num_attention_heads, "head_dim": c.head_dim,
         "H_cycles": c.H_cycles, "L_cycles": c.L_cycles, "L_bp_steps": [0, 2],
         "max_position_embeddings": c.max_position_embeddings, "rms_norm_eps": c.rms_norm_eps,
         "rope_theta": c.rope_parameters["rope_theta"], "tie_word_embeddings": False,
         "initializer_range": c.initializer_range, "embedding_scale": c.embedding_scale,
         "prefix_lm": True, "pad_token_id": 0, "bos_token_id": 3, "eos_token_id": 4,
         **config_edits}
  (path / "config.json").write_text(json.dumps(cfg, indent=2))
  return path


@pytest.mark.parametrize("name", ["h2l3", "h1l1_4heads"])
def test_reference_export_loads_with_the_logits_of_the_transformers_layout(name, tmp_path):
  """Before: num_hidden_layers (both stacks) was read as per stack, tensors went missing."""
  model = hf_model(name)
  reference_export(model, tmp_path / "ref")
  model.save_pretrained(tmp_path / "tf")  # model is bf16 now: the same weights, HF's config
  ref_config, ref = hf.load(tmp_path / "ref")
  tf_config, tf = hf.load(tmp_path / "tf")
  assert ref_config == tf_config
  assert ref_config.layers_per_stack == HF_CONFIGS[name]["num_hidden_layers"]
  assert ref_config.rope_theta == 500.0
  jax.tree_util.tree_map(np.testing.assert_array_equal, ref, tf)
  batch = example_batch(ref_config.vocab_size)
  ours = np.asarray(hrm_jax.LanguageModel(ref_config).apply(ref, batch))
  np.testing.assert_array_equal(ours, hrm_jax.LanguageModel(tf_config).apply(tf, batch))
  # a fresh float32 model: .float() would keep RoPE's inv_freq buffer rounded to bf16
  f32 = transformers.HrmTextForCausalLM.from_pretrained(tmp_path / "tf", dtype=torch.float32)
  expected = hf_logits(f32.eval(), batch["inputs"], batch["prefix_mask"])
  np.testing.assert_allclose(ours, expected, **TOL)


def test_every_meaning_of_num_hidden_layers_is_read_and_a_misfit_is_listed(tmp_path):
  model = hf_model("h2l3")  # 2 layers per stack, H_cycles 2, L_cycles 3
  for total in (2, 4, 16):
    reference_export(model, tmp_path / str(total), num_hidden_layers=total)
    assert hf.load(tmp_path / str(total))[0].layers_per_stack == 2
  reference_export(model, tmp_path / "bad", num_hidden_layers=6)
  with pytest.raises(ValueError, match=r"num_hidden_layers=6 fits none of the layouts of weights "
                     r"with 2 layers per stack: per stack = 2, both stacks = 4, inflated "
                     r"\(layers\*H_cycles\*\(L_cycles\+1\)\) = 16"):
    hf.load(tmp_path / "bad")
  # num_layers_per_stack wins; the weights must then match it
  reference_export(model, tmp_path / "wins", num_hidden_layers=6, num_layers_per_stack=2)
  assert hf.load(tmp_path / "wins")[0].layers_per_stack == 2
  reference_export(model, tmp_path / "three", num_layers_per_stack=3)
  with pytest.raises(ValueError, match="missing model.H_module.layers.2.attn.gqkv_proj.weight"):
    hf.load(tmp_path / "three")


def test_stacks_with_different_layer_counts_are_an_error(tmp_path):
  def edit(t):
    for k in [k for k in t if k.startswith("model.L_module.layers.1.")]:
      del t[k]
  with pytest.raises(ValueError, match="different layer counts in the weights \\(H: 2, L: 1\\)"):
    hf.load(_corrupt(tmp_path, edit_tensors=edit))


def _corrupt(tmp_path, edit_tensors=None, edit_config=None, seed=0):
  hf_model("h2l3", seed).save_pretrained(tmp_path)
  if edit_tensors:
    tensors = load_file(tmp_path / hf.WEIGHTS)
    edit_tensors(tensors)
    save_file(tensors, tmp_path / hf.WEIGHTS)
  if edit_config:
    cfg = json.loads((tmp_path / "config.json").read_text())
    edit_config(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
  return tmp_path


def test_missing_unexpected_and_misshaped_tensors_are_listed(tmp_path):
  def edit(t):
    del t["model.H_module.layers.1.mlp.down_proj.weight"]
    t["model.extra.weight"] = np.zeros(3, np.float32)
    t["lm_head.weight"] = t["lm_head.weight"][:5]
  with pytest.raises(ValueError) as e:
    hf.load(_corrupt(tmp_path, edit_tensors=edit))
  msg = str(e.value)
  assert "missing model.H_module.layers.1.mlp.down_proj.weight" in msg
  assert "unexpected model.extra.weight" in msg
  assert "lm_head.weight: shape (5, 32), expected (67, 32)" in msg


def test_unknown_model_type_and_missing_files_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="model_type='llama', expected 'hrm_text'"):
    hf.load(_corrupt(tmp_path / "a", edit_config=lambda c: c.update(model_type="llama")))
  with pytest.raises(ValueError, match="shape"):  # config says a different width
    hf.load(_corrupt(tmp_path / "b", edit_config=lambda c: c.update(intermediate_size=64)))
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.load(tmp_path / "missing")


def test_corrupt_files_are_errors_naming_the_file(tmp_path):
  """Before: a raw SafetensorError / JSONDecodeError without the file's path."""
  good = _corrupt(tmp_path / "good")
  for name, edit in [("truncated", lambda b: b[:len(b) // 2]), ("empty", lambda b: b""),
                     ("garbage", lambda b: b"\x07" * 64)]:
    bad = _corrupt(tmp_path / name)
    (bad / hf.WEIGHTS).write_bytes(edit((good / hf.WEIGHTS).read_bytes()))
    with pytest.raises(ValueError, match=f"{bad / hf.WEIGHTS}: not a readable safetensors"):
      hf.load(bad)
  bad = _corrupt(tmp_path / "json")
  (bad / "config.json").write_text('{"model_type": "hrm_text",')
  with pytest.raises(ValueError, match=f"{bad / 'config.json'}: not valid JSON"):
    hf.load(bad)
  (bad / "config.json").write_text("[1]")
  with pytest.raises(ValueError, match="config.json: expected a JSON object"):
    hf.load(bad)


def test_index_paths_must_stay_inside_the_checkpoint(tmp_path):
  """Before: an index naming ../elsewhere/model.safetensors (or an absolute path) was read."""
  outside = _corrupt(tmp_path / "elsewhere")
  hf_model("h2l3").save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
  index = json.loads((tmp_path / "ckpt" / hf.INDEX).read_text())
  for escape in ["../elsewhere/model.safetensors", str(outside / hf.WEIGHTS),
                 "sub/../../elsewhere/model.safetensors"]:
    weight_map = {k: escape for k in index["weight_map"]}
    (tmp_path / "ckpt" / hf.INDEX).write_text(json.dumps({**index, "weight_map": weight_map}))
    with pytest.raises(ValueError, match=f"weight_map file '{escape}' is not a path inside"):
      hf.load(tmp_path / "ckpt")
  (tmp_path / "ckpt" / hf.INDEX).write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
  with pytest.raises(FileNotFoundError, match="gone.safetensors: listed in"):
    hf.load(tmp_path / "ckpt")
  (tmp_path / "ckpt" / hf.INDEX).write_text("not json")
  with pytest.raises(ValueError, match=f"{hf.INDEX}: not valid JSON"):
    hf.load(tmp_path / "ckpt")
