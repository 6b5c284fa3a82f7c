"""The tokenizer's prompt format and JSONL -> data_io conversion (library and script)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hrm_jax import data, tokenizer
from hrm_jax.data import demo
from helpers import files_of

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


@pytest.mark.slow  # spawns experiments/*.py
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
  r = run(f"--mix={f}:1.5", f"--tokenizer={tok_files}", f"--out={tmp_path}/mix", "--epochs=1")
  assert r.returncode == 0, r.stderr
  assert "| 6 | 1.50x |" in r.stdout
  r = run(f"--mix={f}:lots", f"--tokenizer={tok_files}", f"--out={tmp_path}/m2", "--epochs=1")
  assert r.returncode != 0 and "--mix" in r.stderr


def reference_prepare(files, tok, out, *, epochs, max_seq_len, long_context, seed, tokenizer_json):
  """The pre-streaming prepare_jsonl + write_sampled, kept as the reference for the output's
  bytes: the whole corpus as Python lists, one np.save per array."""
  context = max_seq_len + 1
  inst_all, resp_all = [], []
  for file in files:
    with open(file, encoding="utf-8") as f:
      rows = [json.loads(line) for line in f if line.strip()]
    prompts = [tok.condition_tokens(r.get("condition", "direct")) for r in rows]
    inst_ids = tok.encode_texts([r["instruction"] for r in rows])
    resp_ids = tok.encode_texts([r["response"] for r in rows])
    for cond_ids, i_text, o_text in zip(prompts, inst_ids, resp_ids):
      inst = [tok.boq_id, *cond_ids, *i_text, tok.eoq_id]
      resp = [*o_text, tok.eoa_id]
      if len(resp) < 2:
        continue
      allowed = context - min(len(inst), context)
      if long_context == "truncate":
        if len(resp) > allowed:
          if allowed < 2:
            continue
          resp = resp[:allowed]
      elif len(resp) > allowed:
        continue
      inst_all.append(inst)
      resp_all.append(resp)
  inst_len = np.array([len(i) for i in inst_all], np.int64)
  resp_len = np.array([len(o) for o in resp_all], np.int64)
  starts = np.concatenate([[0], np.cumsum(inst_len + resp_len)[:-1]]).astype(np.int64)
  tokens = np.fromiter((t for i, o in zip(inst_all, resp_all) for t in (*i, *o)), np.int64)
  fields = {"inst_start": starts, "inst_len": inst_len, "resp_start": starts + inst_len,
            "resp_len": resp_len}
  info = dict(tok.info.to_dict(), tokenizer_path=out, vocab_size=tok.tokenizer_vocab_size)
  os.makedirs(out)
  vocab = tok.tokenizer_vocab_size
  dtype = np.uint8 if vocab <= 255 else np.uint16 if vocab <= 65535 else np.int32
  np.save(os.path.join(out, "tokens.npy"), tokens.astype(dtype))
  with open(tokenizer_json, "rb") as src, open(os.path.join(out, "tokenizer.json"), "wb") as dst:
    dst.write(src.read())
  with open(os.path.join(out, "tokenizer_info.json"), "w") as f:
    json.dump(info, f, indent=1)
  rng = np.random.Generator(np.random.Philox(seed=seed))
  for e in range(epochs):
    order = rng.permutation(len(inst_len))
    os.makedirs(os.path.join(out, f"epoch_{e}"))
    for name, a in fields.items():
      np.save(os.path.join(out, f"epoch_{e}", f"{name}.npy"), a[order])
  meta = {"tokenizer_info": info, "vocab_size": None, "max_seq_len": context,
          "total_length": int(inst_len.sum() + resp_len.sum())}
  with open(os.path.join(out, "metadata.json"), "w") as f:
    json.dump(meta, f, indent=1)


def random_rows(rng, n):
  alphabet = list("abc xyz0123456789+-*/=()\n\"\\") + ["é", "中", "<|im_end|>", "\u2028"]
  text = lambda k: "".join(rng.choice(alphabet, int(k)).tolist())
  conds = ["direct", "cot", "synth,cot", "noisy"]
  return [{"instruction": text(rng.integers(0, 40)), "response": text(rng.integers(0, 60)),
           "condition": conds[int(rng.integers(4))]} for _ in range(n)]


@pytest.mark.parametrize("long_context,workers,chunk_bytes", [("truncate", 1, 700),
                                                              ("drop", 2, 3000),
                                                              ("truncate", 2, 1 << 20)])
def test_streaming_output_is_byte_identical_to_the_former_writer(tok_files, tmp_path,
                                                                  long_context, workers,
                                                                  chunk_bytes):
  rng = np.random.default_rng(3)
  files = [write_jsonl(tmp_path / f"in{k}.jsonl",  # raw UTF-8 in one file, \u escapes in others
                       [json.dumps(r, ensure_ascii=k > 0) for r in random_rows(rng, n)] + [""])
           for k, n in enumerate((150, 1, 90))]
  tok = tokenizer.Tokenizer.load(tok_files)
  out = str(tmp_path / "out")
  s = data.prepare_jsonl(files, tok, out, epochs=3, max_seq_len=40, long_context=long_context,
                         seed=5, tokenizer_json=tok_files, workers=workers,
                         chunk_bytes=chunk_bytes)
  assert s.total.truncated + s.total.dropped_long > 10  # the length rules were exercised
  os.rename(out, tmp_path / "streamed")
  reference_prepare(files, tok, out, epochs=3, max_seq_len=40, long_context=long_context,
                    seed=5, tokenizer_json=tok_files)
  got, want = files_of(tmp_path / "streamed"), files_of(out)
  assert set(got) == set(want) | {data.sampled.TOKEN_CHECK}
  for name in want:
    assert got[name] == want[name], name


def test_chunks_hold_whole_lines_whatever_their_size(tok_files, tmp_path):
  """Chunks smaller than a line, CRLF line ends and no final newline: the output of one big
  chunk, and an error still names its line."""
  rows = [json.dumps({"instruction": "x" * k, "response": "y" * (k + 1), "condition": "cot"})
          for k in range(1, 60, 7)]
  f = tmp_path / "crlf.jsonl"
  f.write_bytes("\r\n".join(rows).encode())
  tok = tokenizer.Tokenizer.load(tok_files)
  out = str(tmp_path / "out")
  for chunk_bytes in (1 << 20, 9):
    s = data.prepare_jsonl([str(f)], tok, out, epochs=2, chunk_bytes=chunk_bytes)
    assert s.total.rows == s.total.kept == len(rows)
    os.rename(out, tmp_path / f"chunks_{chunk_bytes}")
  assert files_of(tmp_path / "chunks_9") == files_of(tmp_path / f"chunks_{1 << 20}")
  f.write_bytes("\n".join([*rows, "", '{"instruction": 1}']).encode())
  with pytest.raises(data.DataError, match=rf"{f}:{len(rows) + 2}: field 'instruction'"):
    data.prepare_jsonl([str(f)], tok, out, epochs=1, chunk_bytes=9)


def test_unk_tokens_are_counted_per_file(tok_files, tmp_path):
  tok = tokenizer.Tokenizer.load(tok_files)
  assert tok.unk_id == 1
  a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "é中x", "response": "ok中"}])
  b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": "plain", "response": "ascii"}])
  s = data.prepare_jsonl([a, b], tok, str(tmp_path / "o"), epochs=1)
  assert (s.files[a].unk_tokens, s.files[b].unk_tokens) == (3, 0)
  head, total = s.table().splitlines()[0].split("|"), s.table().splitlines()[-1].split("|")
  assert total[head.index(" `<unk>` tokens ")] == " 3 "


def test_non_utf8_input_names_file_and_line(tok_files, tmp_path):
  f = tmp_path / "latin1.jsonl"
  f.write_bytes(b'{"instruction": "a", "response": "b"}\n\n'
                b'{"instruction": "caf\xe9", "response": "b"}\n')
  with pytest.raises(data.DataError, match=rf"{f}:3: not valid UTF-8"):
    data.prepare_jsonl([str(f)], tokenizer.Tokenizer.load(tok_files), str(tmp_path / "o"),
                       epochs=1, workers=2)
  assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow  # spawns experiments/*.py
def test_prepare_data_never_replaces_what_it_did_not_write(tok_files, tmp_path):
  """Issue 13: --out onto a directory holding the input JSONL, or onto the input itself."""
  script = os.path.join(ROOT, "experiments", "prepare_data.py")
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *flags: subprocess.run([sys.executable, script, f"--tokenizer={tok_files}",
                                       "--epochs=1", "--workers=2", *flags], env=env,
                                      capture_output=True, text=True, timeout=300)
  home = tmp_path / "project"
  home.mkdir()
  f = write_jsonl(home / "in.jsonl", [{"instruction": "2*3", "response": "6"}] * 4)
  for flags in ([f"--out={home}"], [f"--out={home}", "--overwrite"], [f"--out={f}"],
                [f"--out={f}", "--overwrite"]):
    r = run(f"--jsonl={f}", *flags)
    assert r.returncode == 2 and "refusing to replace" in r.stderr, (flags, r.stderr)
    assert os.listdir(home) == ["in.jsonl"] and os.path.isfile(f)
  out = str(tmp_path / "out")
  assert run(f"--jsonl={f}", f"--out={out}").returncode == 0
  r = run(f"--jsonl={f}", f"--out={out}")
  assert r.returncode == 2 and "--overwrite" in r.stderr
  r = run(f"--jsonl={f}", f"--out={out}", "--overwrite")
  assert r.returncode == 0, r.stderr
  assert data.open_sampled(out).ids_checked
  inside = write_jsonl(os.path.join(out, "more.jsonl"), [{"instruction": "1", "response": "2"}])
  r = run(f"--jsonl={inside}", f"--out={out}", "--overwrite")
  assert r.returncode == 2 and "holds the input" in r.stderr
  assert os.path.isfile(inside)


def test_parquet_input_equals_the_same_rows_as_jsonl(tok_files, tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  rows = random_rows(np.random.default_rng(4), 120)
  j = write_jsonl(tmp_path / "rows.jsonl", rows)
  p = str(tmp_path / "rows.parquet")
  pq.write_table(pa.Table.from_pylist(rows), p, row_group_size=17)
  tok = tokenizer.Tokenizer.load(tok_files)
  out = str(tmp_path / "out")
  data.prepare_jsonl([j], tok, out, epochs=2, max_seq_len=40, seed=1, chunk_bytes=500)
  os.rename(out, tmp_path / "from_jsonl")
  s = data.prepare_jsonl([p], tok, out, epochs=2, max_seq_len=40, seed=1, chunk_bytes=500,
                         workers=2)
  assert s.files[p].rows == 120
  assert files_of(out) == files_of(tmp_path / "from_jsonl")
  bad = str(tmp_path / "bad.parquet")
  pq.write_table(pa.table({"instruction": ["a", None], "response": ["b", "c"]}), bad)
  with pytest.raises(data.DataError, match=rf"{bad}:2: field 'instruction'"):
    data.prepare_jsonl([bad], tok, str(tmp_path / "o"), epochs=1)
  pq.write_table(pa.table({"prompt": ["a"], "response": ["b"]}), bad)
  with pytest.raises(data.DataError, match=rf"{bad}: column 'instruction' missing"):
    data.prepare_jsonl([bad], tok, str(tmp_path / "o"), epochs=1)


def test_mix_repeats_and_caps_files_and_reports_coverage(tok_files, tmp_path):
  a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": f"a{i}", "response": "x"}
                                         for i in range(10)])
  b = write_jsonl(tmp_path / "b.jsonl", [{"instruction": f"b{i}", "response": "yy"}
                                         for i in range(8)])
  tok = tokenizer.Tokenizer.load(tok_files)
  out = str(tmp_path / "mix")
  s = data.prepare_jsonl([a, b], tok, out, epochs=2, repeats={a: 2, b: 0.25})
  assert (s.files[a].used, s.files[b].used) == (20, 2)
  assert "| 20 | 2.00x |" in s.table() and "| 2 | 0.25x |" in s.table()
  d = data.open_sampled(out)
  ex = d.examples(0)
  assert len(ex) == 22 and d.total_length == int(ex.inst_len.sum() + ex.resp_len.sum())
  texts = sorted(tok.decode(d.tokens[i:i + n]) for i, n in zip(ex.inst_start, ex.inst_len))
  strip = lambda t: t.split("<|object_ref_start|>")[1].split("<|im_end|>")[0]
  assert sorted(map(strip, texts)) == sorted([f"a{i}" for i in range(10)] * 2 + ["b0", "b1"])
  assert len(d.tokens) == s.total.inst_tokens + s.total.resp_tokens  # tokens written once
  with pytest.raises(data.DataError, match="repeat factor 0"):
    data.prepare_jsonl([a], tok, str(tmp_path / "o"), epochs=1, repeats={a: 0})
