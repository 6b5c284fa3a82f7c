"""The tokenizer's prompt format and JSONL -> data_io conversion (library and script)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hrm_jax import data, tokenizer
from hrm_jax.data import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tok_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok")
  path = str(d / "tokenizer.json")
  demo.build_tokenizer().save(path)
  return path


def test_format_and_special_tokens_as_plain_text(tok_files):
  tok = tokenizer.Tokenizer.load(tok_files)
  assert tok.info == tokenizer.TokenizerInfo.default(tok_files, tok.tokenizer_vocab_size)
  assert tok.vocab_size == 256
  text = "1+1<|im_end|>"
  ids = tok.encode_text(text)
  assert tok.eoq_id not in ids and tok.decode(ids) == text
  c = tok.condition_ids
  assert tok.format_prompt("ab", "synth,cot") == [tok.boq_id, c["synth"], c["cot"],
                                                  *tok.encode_text("ab"), tok.eoq_id]
  assert tok.format_prompt("ab", ["cot"])[1] == c["cot"]
  assert tok.format_prompt("ab")[1] == c["direct"]
  assert tok.format_response("7") == [*tok.encode_text("7"), tok.eoa_id]
  with pytest.raises(ValueError, match=r"unknown condition 'fast'.*'cot', 'direct'"):
    tok.format_prompt("x", "direct,fast")


def test_info_round_trip_and_load_variants(tok_files, tmp_path):
  info = tokenizer.TokenizerInfo.default("x", 105)
  assert tokenizer.TokenizerInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
  with pytest.raises(ValueError, match="vocab_size"):
    tokenizer.TokenizerInfo.from_dict({k: v for k, v in info.to_dict().items()
                                       if k != "vocab_size"})
  bad = dict(info.to_dict(), eoa="<|nope|>")
  with pytest.raises(ValueError, match="eoa.*<\\|nope\\|>"):
    tokenizer.Tokenizer.load(tok_files, bad)
  info_file = tmp_path / "info.json"
  info_file.write_text(json.dumps(dict(info.to_dict(), eoa="<|im_end|>")))
  assert tokenizer.Tokenizer.load(tok_files, str(info_file)).eoa_id == \
      tokenizer.Tokenizer.load(tok_files).eoq_id
  assert tokenizer.load(tok_files).boq_id == tokenizer.load(os.path.dirname(tok_files)).boq_id


def write_jsonl(path, rows):
  with open(path, "w") as f:
    for r in rows:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
  return str(path)


def test_prepare_rules_and_output(tok_files, tmp_path):
  tok = tokenizer.Tokenizer.load(tok_files)
  a = write_jsonl(tmp_path / "a.jsonl", [
      {"instruction": "1+2", "response": "3"},
      {"instruction": "q", "response": "", "condition": "cot"},  # empty response: dropped
      {"instruction": "x" * 20, "response": "y" * 30, "condition": "synth,cot"},  # too long
      "",
  ])
  b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": "hi", "response": "there"}] * 3)
  out = str(tmp_path / "out")
  s = data.prepare_jsonl([a, b], tok, out, epochs=2, max_seq_len=30, tokenizer_json=tok_files)
  ta, tb = s.files[a], s.files[b]
  assert (ta.rows, ta.kept, ta.dropped_short, ta.truncated, ta.dropped_long) == (3, 2, 1, 1, 0)
  assert (tb.rows, tb.kept) == (3, 3)
  assert "| **total** | 6 | 5 | 1 | 0 | 1 |" in s.table()
  sampled = data.open_sampled(out, max_seq_len=30)
  assert sampled.metadata["max_seq_len"] == 31 and sampled.num_epochs == 2
  assert sampled.total_length == s.total.inst_tokens + s.total.resp_tokens
  ex = sampled.examples(0)
  long = int(np.argmax(ex.lengths))
  assert ex.inst_len[long] + ex.resp_len[long] == 31  # truncated to the context
  decoded = tok.decode(sampled.tokens[ex.inst_start[long]:ex.inst_start[long] + ex.inst_len[long]])
  assert decoded == "<|im_start|><|quad_end|><|object_ref_end|>" + "x" * 20 + "<|im_end|>"
  assert tokenizer.load(out).eoa_id == tok.eoa_id  # self-contained: tokenizer + info copied
  s = data.prepare_jsonl([a], tok, str(tmp_path / "drop"), epochs=1, max_seq_len=30,
                         long_context="drop")
  assert (s.files[a].kept, s.files[a].dropped_long) == (1, 1)


@pytest.mark.parametrize("line,message", [
    ("{not json", ":2: not valid JSON"),
    (json.dumps({"instruction": "a"}), ":2: field 'response'"),
    (json.dumps({"instruction": "a", "response": "b", "condition": "slow"}),
     ":2: field 'condition': unknown condition 'slow'"),
    (json.dumps([1, 2]), ":2: expected a JSON object per line"),
])
def test_prepare_errors_name_file_and_line(tok_files, tmp_path, line, message):
  f = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "response": "b"}, line])
  with pytest.raises(data.DataError) as e:
    data.prepare_jsonl([f], tokenizer.Tokenizer.load(tok_files), str(tmp_path / "o"), epochs=1)
  assert f + message in str(e.value)
  assert not os.path.exists(tmp_path / "o")


def test_prepare_data_script(tok_files, tmp_path):
  f = write_jsonl(tmp_path / "in.jsonl", [{"instruction": "2*3", "response": "6"}] * 4)
  out = str(tmp_path / "out")
  script = os.path.join(ROOT, "experiments", "prepare_data.py")
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *flags: subprocess.run([sys.executable, script, *flags], env=env,
                                      capture_output=True, text=True, timeout=120)
  r = run(f"--jsonl={f}", f"--tokenizer={tok_files}", f"--out={out}", "--epochs=2",
          "--max_seq_len=64")
  assert r.returncode == 0, r.stderr
  assert "| **total** | 4 | 4 |" in r.stdout
  assert data.open_sampled(out).num_epochs == 2
  r = run(f"--jsonl={f}", f"--tokenizer={tmp_path}/missing.json", f"--out={out}", "--epochs=2")
  assert r.returncode != 0 and "--tokenizer" in r.stderr
  r = run(f"--jsonl={f}", f"--tokenizer={tok_files}", f"--out={out}", "--epochs=2",
          "--long_context=cut")
  assert r.returncode != 0 and "long_context" in r.stderr
