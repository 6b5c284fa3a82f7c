"""Validation of data_io sampled directories: every failure names the file and the field."""

import json
import logging
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from hrm_jax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INFO = {"tokenizer_path": "", "boq": "<b>", "eoq": "<e>", "eoa": "<a>", "condition_mapping": {},
        "vocab_size": 300}


def make_dir(tmp_path, n=30, epochs=2, max_seq_len=64, resp_lens=None, overwrite=True):
  rng = np.random.default_rng(0)
  inst = [rng.integers(0, 300, int(k)).tolist() for k in rng.integers(2, 10, n)]
  resp = [rng.integers(0, 300, int(k)).tolist()
          for k in (resp_lens if resp_lens is not None else rng.integers(2, 10, n))]
  tokens, ex = data.concat_examples(inst, resp)
  path = str(tmp_path / "d")
  data.write_sampled(path, tokens=tokens, examples=ex, tokenizer_info=INFO,
                     max_seq_len=max_seq_len, epochs=epochs, overwrite=overwrite)
  return path


def expect_error(path, *parts, **kw):
  with pytest.raises(data.DataError) as e:
    data.open_sampled(path, **kw)
  for p in parts:
    assert p in str(e.value), f"{p!r} not in {e.value}"
  return str(e.value)


def test_valid_directory_opens(tmp_path):
  path = make_dir(tmp_path)
  s = data.open_sampled(path)
  assert s.num_epochs == 2 and s.tokens.dtype == np.uint16 and s.vocab_size == 512
  assert isinstance(s.tokens, np.memmap)
  assert s.total_length == int(s.examples(0).inst_len.sum() + s.examples(0).resp_len.sum())
  assert sorted(s.examples(0).inst_start) == sorted(s.examples(1).inst_start)
  assert not np.array_equal(s.examples(0).inst_start, s.examples(1).inst_start)


def test_missing_files(tmp_path):
  path = make_dir(tmp_path)
  os.remove(os.path.join(path, "epoch_1", "resp_len.npy"))
  expect_error(path, os.path.join("epoch_1", "resp_len.npy"), "'resp_len'", "missing")
  os.remove(os.path.join(path, "tokens.npy"))
  expect_error(path, "tokens.npy", "'tokens'", "missing")
  os.remove(os.path.join(path, "metadata.json"))
  expect_error(path, "metadata.json", "missing")


@pytest.mark.parametrize("field,value", [("max_seq_len", "4097"), ("total_length", -1),
                                         ("tokenizer_info", None)])
def test_bad_metadata_fields(tmp_path, field, value):
  path = make_dir(tmp_path)
  meta_file = os.path.join(path, "metadata.json")
  with open(meta_file) as f:
    meta = json.load(f)
  meta[field] = value
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  expect_error(path, "metadata.json", f"'{field}'")


def test_metadata_tokenizer_vocab_missing(tmp_path):
  path = make_dir(tmp_path)
  meta_file = os.path.join(path, "metadata.json")
  with open(meta_file) as f:
    meta = json.load(f)
  del meta["tokenizer_info"]["vocab_size"]
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  expect_error(path, "metadata.json", "'tokenizer_info.vocab_size'")


@pytest.mark.parametrize("array,message", [(np.zeros(10, np.float32), "dtype float32"),
                                           (np.zeros(10, np.int64), "dtype int64"),
                                           (np.zeros((2, 5), np.int32), "1-D")])
def test_bad_tokens_array(tmp_path, array, message):
  path = make_dir(tmp_path)
  np.save(os.path.join(path, "tokens.npy"), array)
  expect_error(path, "tokens.npy", "'tokens'", message)


def test_bad_index_dtype_and_shape(tmp_path):
  path = make_dir(tmp_path)
  f = os.path.join(path, "epoch_0", "inst_start.npy")
  good = np.load(f)
  np.save(f, good.astype(np.float64))
  expect_error(path, f, "'inst_start'", "dtype float64")
  np.save(f, good.reshape(-1, 1))
  expect_error(path, f, "'inst_start'", "1-D")


def test_index_arrays_of_unequal_length(tmp_path):
  path = make_dir(tmp_path)
  f = os.path.join(path, "epoch_1", "resp_start.npy")
  np.save(f, np.load(f)[:-1])
  expect_error(path, f, "'resp_start'", "unequal length")


@pytest.mark.parametrize("kind,field", [("inst", "start"), ("resp", "len")])
def test_span_outside_tokens(tmp_path, kind, field):
  path = make_dir(tmp_path)
  f = os.path.join(path, "epoch_0", f"{kind}_{field}.npy")
  a = np.load(f)
  a[3] += 10 ** 6
  np.save(f, a)
  expect_error(path, os.path.join(path, "epoch_0", f"{kind}_start.npy"),
               f"'{kind}_start+{kind}_len'", "example 3", "outside tokens.npy",
               max_seq_len=10 ** 7)


def test_negative_span(tmp_path):
  path = make_dir(tmp_path)
  f = os.path.join(path, "epoch_0", "resp_start.npy")
  a = np.load(f)
  a[0] = -1
  np.save(f, a)
  expect_error(path, f, "'resp_start'", "outside tokens.npy")


def test_token_ids_checked_once_by_the_writers_record(tmp_path):
  path = make_dir(tmp_path)  # uint16 ids, tokenizer vocab 300: the dtype does not bound them
  with open(os.path.join(path, data.sampled.TOKEN_CHECK)) as f:
    rec = json.load(f)
  assert rec["bytes"] == os.path.getsize(os.path.join(path, "tokens.npy"))
  assert 0 <= rec["min_id"] <= rec["max_id"] < 300 and rec["dtype"] == "uint16"
  assert data.open_sampled(path).ids_checked
  # the record's max id against a smaller vocabulary: refused at open without a scan
  expect_error(path, "tokens.npy", "'tokens'", "recorded in token_check.json",
               "vocabulary [0, 100)", vocab_size=100)
  os.remove(os.path.join(path, data.sampled.TOKEN_CHECK))
  assert not data.open_sampled(path).ids_checked


def _far_bad_id_dir(tmp_path, n_tokens=1 << 26):
  """A sampled dir with int32 ids (vocab 70,000), a 256 MiB sparse tokens.npy and one example
  whose response, at the very end of the file, holds the id 70,001."""
  info = dict(INFO, vocab_size=70000)
  tokens, ex = data.concat_examples([[1, 2, 3]] * 40, [[4, 5, 6]] * 40)
  path = str(tmp_path / "far")
  data.write_sampled(path, tokens=tokens, examples=ex, tokenizer_info=info, max_seq_len=64,
                     epochs=1)
  big = np.lib.format.open_memmap(os.path.join(path, "tokens.npy"), "w+", np.int32, (n_tokens,))
  big[:tokens.size] = tokens
  big[-3:] = [7, 70001, 8]
  big.flush()
  del big
  f = os.path.join(path, "epoch_0", "resp_start.npy")
  starts = np.load(f)
  victim = 17
  starts[victim] = n_tokens - 3
  np.save(f, starts)
  return path, victim


def test_open_does_not_read_tokens_in_full_and_the_batch_names_the_bad_id(tmp_path):
  path, victim = _far_bad_id_dir(tmp_path)
  s = data.open_sampled(path)  # a full scan would find 70,001 and raise
  assert not s.ids_checked  # tokens.npy changed size: the record is stale, not trusted
  pipe = data.Pipeline(s, rows=2, row_len=16, prefetch=0, drop_last=False)
  with pytest.raises(data.DataError) as e:
    for _ in pipe.iterator():
      pass
  msg = str(e.value)
  for part in (path, f"example {victim}", "token id 70001", "vocabulary [0, 70000)",
               "check_data.py"):
    assert part in msg, (part, msg)


@pytest.mark.slow  # spawns experiments/*.py
def test_check_data_script_scans_and_records_only_when_asked(tmp_path):
  script = os.path.join(ROOT, "experiments", "check_data.py")
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *a: subprocess.run([sys.executable, script, *a], env=env, capture_output=True,
                                  text=True, timeout=300)
  path, victim = _far_bad_id_dir(tmp_path, n_tokens=1 << 20)
  r = run(path)
  assert r.returncode == 1
  assert f"token id 70001 at index {(1 << 20) - 2}" in r.stderr and f"[{victim}]" in r.stderr
  good = make_dir(tmp_path)
  os.remove(os.path.join(good, data.sampled.TOKEN_CHECK))
  before = sorted(os.listdir(good))
  r = run(good)
  assert r.returncode == 0, r.stderr
  assert "absent or stale" in r.stdout and sorted(os.listdir(good)) == before  # read-only
  assert not data.open_sampled(good).ids_checked
  old = os.umask(0o022)
  try:
    r = run(good, "--record")
  finally:
    os.umask(old)
  assert r.returncode == 0, r.stderr
  rec_file = os.path.join(good, data.sampled.TOKEN_CHECK)
  assert stat.S_IMODE(os.stat(rec_file).st_mode) == 0o644
  assert data.open_sampled(good).ids_checked
  assert "current" in run(good).stdout


def test_examples_longer_than_max_seq_len(tmp_path):
  path = make_dir(tmp_path, max_seq_len=64)
  msg = expect_error(path, "resp_len.npy", "'inst_len+resp_len'", "max_seq_len=8",
                     max_seq_len=8)
  assert "epoch_0" in msg
  path = make_dir(tmp_path, max_seq_len=10)  # metadata: context 10 -> at most 9 model tokens
  expect_error(path, "resp_len.npy", "'inst_len+resp_len'", "metadata.json max_seq_len 10")


def test_fewer_epochs_than_requested(tmp_path):
  path = make_dir(tmp_path, epochs=2)
  assert data.open_sampled(path, epochs=1).num_epochs == 1
  expect_error(path, "epoch_2", "'epoch_2'", "asks for 3 epoch(s)", epochs=3)


def test_short_responses_are_dropped_with_a_count(tmp_path, caplog):
  lens = [5, 1, 3, 0, 2, 1] * 5
  path = make_dir(tmp_path, n=30, resp_lens=lens)
  with caplog.at_level(logging.WARNING):
    s = data.open_sampled(path)
  assert s.dropped == [15, 15]
  assert "dropped 15 of 30" in caplog.text
  assert (s.examples(0).resp_len >= 2).all() and len(s.examples(1)) == 15
  batches = list(data.Pipeline(s, rows=2, row_len=16, prefetch=0).iterator())
  assert batches and all((b["labels"] != -100).any() for b in batches)


def test_pipeline_rejects_rows_shorter_than_an_example(tmp_path):
  s = data.open_sampled(make_dir(tmp_path))
  with pytest.raises(data.DataError, match="longer than row_len=8"):
    data.Pipeline(s, rows=2, row_len=8)


def test_writer_refuses_what_it_did_not_write_and_follows_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    path = make_dir(tmp_path, epochs=1)
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
  assert stat.S_IMODE(os.stat(os.path.join(path, "epoch_0", "inst_len.npy")).st_mode) == 0o644
  with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
    make_dir(tmp_path, epochs=3, overwrite=False)
  tokens, ex = data.concat_examples([[1, 2]] * 4, [[3, 4]] * 4)
  write = lambda **kw: data.write_sampled(path, tokens=tokens, examples=ex, tokenizer_info=INFO,
                                          max_seq_len=64, epochs=3, **kw)
  write(overwrite=True)  # a sampled directory: replaced
  assert data.open_sampled(path).num_epochs == 3
  assert sorted(os.listdir(tmp_path)) == ["d"]  # no temp or old folders left behind
  with pytest.raises(FileExistsError, match="holds the input"):
    write(overwrite=True, inputs=[os.path.join(path, "tokenizer.json")])
  with open(os.path.join(path, "notes.txt"), "w") as f:
    f.write("mine")
  with pytest.raises(FileExistsError, match="holds notes.txt"):
    write(overwrite=True)
  assert open(os.path.join(path, "notes.txt")).read() == "mine"
  os.remove(os.path.join(path, "notes.txt"))
  with open(os.path.join(path, "epoch_1", "extra.npy"), "w") as f:
    f.write("x")
  with pytest.raises(FileExistsError, match="epoch_1/extra.npy"):
    write(overwrite=True)
