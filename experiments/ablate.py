"""Ablations: HRM against its baselines at matched size or compute, on the demo tasks.

    python experiments/ablate.py --config=demo --archs=hrm,transformer,trm,rins,ut --seeds=3
    python experiments/ablate.py --quick --archs=hrm,transformer --sweep_cycles=1,2,3
    python experiments/ablate.py --match=params --sweep_cycles=1,2,3,4 --sweep_L_cycles=1,3,5
    python experiments/ablate.py --archs=hrm,hrm_causal,hrm_post_norm,hrm_no_pos_emb

Each (arch, seed) is a normal, resumable training run in `<workdir>/<arch>_s<seed>` (a rerun
skips runs with a result.json and resumes interrupted ones). The anchor is the config's HRM;
every other arch gets the n_layers whose parameter count (--match=params) or mean training
FLOPs per token (--match=flops, truncated backward counted) is closest (a variant of HRM,
ablation.VARIANTS, keeps the anchor's size), and the same data,
steps, tokens and lr schedule. Kept checkpoints along training are evaluated (held-out
greedy exact match per task, EMA weights), giving accuracy vs training FLOPs. Writes
<workdir>/ablation.{json,md,png} (and ablation_sweep.png with --sweep_cycles/--sweep_L_cycles:
a trained HRM run at other H or L cycle counts than it was trained with).
"""

from __future__ import annotations

import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import app, flags  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from experiments import configs  # noqa: E402
from hrm_jax import ablation, atomic, cli, plotting  # noqa: E402

_CONFIG = configs.define_config_flag(
    f"Config name ({', '.join(configs.NAMES)}) or path; its `ablate` section sets the budget.")
_ARCHS = flags.DEFINE_list("archs", ["hrm", "transformer", "trm", "rins", "ut"],
                           f"Architectures or variants to train, from {list(ablation.NAMES)} "
                           "(variants: ablation.VARIANTS; --config.model.<field> applies to "
                           "every run).")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Seeds per arch (0 .. seeds-1; model init).")
_MATCH = flags.DEFINE_enum("match", "flops", list(ablation.MATCH_BY),
                           "Match each arch to the HRM anchor by parameters or training FLOPs.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output root, one training run per "
                               "(arch, seed) under it (default runs/ablate, runs/ablate_quick).")
_OUT = flags.DEFINE_string("out", None, "Deprecated alias of --workdir (warns; removed in the "
                           "next release).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny model, a few dozen steps, small eval: minutes.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train nothing: tables and plots from the runs already finished "
    "(e.g. while the full run is still going).")
_SWEEP_H = flags.DEFINE_list("sweep_cycles", [], "H_cycles to evaluate trained HRM runs at "
                             "(L_cycles as trained).")
_SWEEP_L = flags.DEFINE_list("sweep_L_cycles", [], "L_cycles to evaluate trained HRM runs at "
                             "(H_cycles as trained).")

# --quick: applied unless the same --config.x.y is given on the command line.
QUICK = {
    "model.hidden_size": 32, "model.num_heads": 2, "model.n_layers": 2,
    "train.bp_warmup_ratio": 0.0, "data.rows": 8, "data.row_len": 64,
    "train.warmup_steps": 2, "log.every_steps": 5, "checkpoint.async_save": False,
    "model.unroll_scans": False, "ablate.total_steps": 16, "ablate.eval_points": 2,
    "ablate.eval_per_task": 4,
}


def apply_quick(cfg: ml_collections.ConfigDict, argv: list[str]) -> None:
  given = {a.split("=", 1)[0][len("--config."):] for a in argv if a.startswith("--config.")}
  for key, value in QUICK.items():
    if key not in given:
      section, field = key.split(".")
      cfg[section][field] = value


def int_list(flag: str, values: list[str]) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise app.UsageError(f"--{flag}={','.join(values)}: expected comma-separated integers")
  if any(v < 1 for v in out):
    raise app.UsageError(f"--{flag}: cycle counts must be >= 1, got {out}")
  return out


def plot_curves(results: list[dict], match: str, out: str) -> None:
  """Held-out exact match (all tasks) vs training FLOPs, one line per arch (band: +-std)."""
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  for arch in dict.fromkeys(r["arch"] for r in results):
    x, mean, std = ablation.curve([r for r in results if r["arch"] == arch])
    ax.plot(x, 100 * mean, marker="o", label=arch)
    ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.15)
  ax.set_xscale("log")
  ax.set_xlabel("training FLOPs (truncated backward counted)")
  ax.set_ylabel("held-out exact match, all tasks (%)")
  ax.set_title(f"demo tasks, matched by {match}")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  plotting.write_png(fig, out, dpi=110)


def plot_sweep(sweeps: dict[str, dict[str, dict[str, float]]], trained: tuple[int, int],
               out: str) -> None:
  """Exact match vs H_cycles (and/or L_cycles) of trained HRM runs, one line per task."""
  runs = list(sweeps.values())
  keys = list(runs[0])
  axes_of = {"H_cycles": [k for k in keys if k.endswith(f"_L{trained[1]}")],
             "L_cycles": [k for k in keys if k.startswith(f"H{trained[0]}_")]}
  axes_of = {name: ks for name, ks in axes_of.items() if len(ks) > 1}
  fig, axes = plt.subplots(1, max(1, len(axes_of)), figsize=(5.2 * max(1, len(axes_of)), 3.8),
                           squeeze=False)
  tasks = list(runs[0][keys[0]])
  for ax, (name, ks) in zip(axes[0], axes_of.items()):
    x = [int(k[1:].split("_L")[0 if name == "H_cycles" else 1]) for k in ks]
    order = np.argsort(x)
    for task in tasks:
      mean = np.array([ablation.mean_std([run[k][task] for run in runs])[0] for k in ks])
      ax.plot(np.array(x)[order], 100 * mean[order], marker="o", label=task,
              linewidth=2.5 if task == ablation.ALL else 1.0)
    ax.axvline(trained[0 if name == "H_cycles" else 1], color="gray", linestyle="--",
               linewidth=0.8)
    ax.set_xticks(sorted(x))
    ax.set_xlabel(f"{name} at inference (dashed: trained)")
    ax.set_ylabel("held-out exact match (%)")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  fig.suptitle(f"HRM test-time depth (mean over {len(runs)} run(s))")
  fig.tight_layout()
  plotting.write_png(fig, out, dpi=110)


def main(argv):
  del argv
  cfg = _CONFIG.value
  if _QUICK.value:
    apply_quick(cfg, sys.argv)
  unknown = [a for a in _ARCHS.value if a not in ablation.NAMES]
  if unknown or not _ARCHS.value:
    raise app.UsageError(f"--archs: unknown {unknown}; expected a list from "
                         f"{list(ablation.NAMES)}")
  if _SEEDS.value < 1:
    raise app.UsageError(f"--seeds={_SEEDS.value}: expected >= 1")
  if cfg.data.source != "demo":
    raise app.UsageError(f"--config.data.source={cfg.data.source!r}: ablations evaluate on the "
                         "embedded demo tasks; expected 'demo'")
  sweep_h, sweep_l = int_list("sweep_cycles", _SWEEP_H.value), int_list("sweep_L_cycles",
                                                                        _SWEEP_L.value)
  if (sweep_h or sweep_l) and "hrm" not in _ARCHS.value:
    raise app.UsageError("--sweep_cycles/--sweep_L_cycles evaluate trained HRM runs; add hrm "
                         "to --archs")
  for key in ("eval_points", "eval_per_task"):
    if cfg.ablate[key] < 1:
      raise app.UsageError(f"--config.ablate.{key}={cfg.ablate[key]}: expected >= 1")
  out = configs.workdir_from(_WORKDIR.value, _OUT.value,
                             "runs/ablate_quick" if _QUICK.value else "runs/ablate")
  os.makedirs(out, exist_ok=True)

  from hrm_jax.train import loop
  sampled, demo = loop.open_data(cfg)
  anchor_cfg = ml_collections.ConfigDict(cfg.to_dict())
  anchor_cfg.model.arch = "hrm"
  anchor = loop.model_config_from(anchor_cfg, sampled.vocab_size)
  total_steps = cfg.ablate.total_steps or cfg.train.total_steps or data_steps(cfg, sampled)
  seq_len = cfg.data.row_len
  schedule = loop.bp_schedule_from(cfg, anchor)
  matches = [ablation.match_size(anchor, arch, _MATCH.value, seq_len, total_steps,
                                 schedule=schedule)
             for arch in _ARCHS.value]
  anchor_flops = ablation.mean_train_flops_per_token(anchor, seq_len, total_steps, schedule)
  anchor_params = ablation.param_count(anchor)
  tokens = total_steps * cfg.data.rows * cfg.data.row_len
  print(f"Matching by {_MATCH.value} to HRM (hidden {anchor.hidden_size}, n_layers "
        f"{anchor.n_layers}, H{anchor.H_cycles} L{anchor.L_cycles}); schedule of "
        f"{total_steps} steps x {cfg.data.rows} x {cfg.data.row_len} = {tokens:,} tokens per "
        "run (the data's epochs may end it a few steps sooner):\n")
  print("| arch | n_layers | layers/stack | params | x HRM | train MFLOP/token | x HRM |")
  print("|---|---|---|---|---|---|---|")
  for m in matches:
    print(f"| {m.arch} | {m.value} | {m.config.layers_per_stack} | {m.params:,} | "
          f"{m.params / anchor_params:.2f} | {m.train_flops_per_token / 1e6:.1f} | "
          f"{m.train_flops_per_token / anchor_flops:.2f} |")
  print(flush=True)

  results = []
  plan = [(m, seed) for seed in range(_SEEDS.value) for m in matches]
  for i, (m, seed) in enumerate(plan, 1):
    workdir = os.path.join(out, f"{m.arch}_s{seed}")
    if _REPORT_ONLY.value:
      done = ablation.read_result(workdir)
      if done is not None and done["model_config"] == m.config.to_dict():
        results.append(done)
      else:
        print(f"[{i}/{len(plan)}] {m.arch} seed {seed}: not finished, left out", flush=True)
      continue
    print(f"[{i}/{len(plan)}] {m.arch} seed {seed} -> {workdir}", flush=True)
    results.append(ablation.run_one(cfg, m, seed, workdir, total_steps=total_steps,
                                    eval_points=cfg.ablate.eval_points,
                                    eval_per_task=cfg.ablate.eval_per_task))
  if not results:
    raise app.UsageError(f"--report_only: no finished run in {out}")
  rows = ablation.summarize(results)
  command = "python experiments/ablate.py " + " ".join(sys.argv[1:])
  report = {"command": command, "match": _MATCH.value, "total_steps": total_steps,
            "tokens_per_run": tokens, "anchor": anchor.to_dict(), "summary": rows,
            "runs": results}
  table = ablation.markdown_table(rows)
  seeds = max(len(r["seeds"]) for r in rows)
  md = [f"`{command}`\n", f"Held-out greedy exact match (%, EMA weights, "
        f"{cfg.ablate.eval_per_task} examples per task; mean ± std over {seeds} "
        f"seed(s)) after {trained_span(results)}, matched by {_MATCH.value}:\n", table]
  diffs = [d for arch in dict.fromkeys(r["arch"] for r in results) if arch != "hrm"
           for d in [ablation.difference(results, "hrm", arch)] if d is not None]
  if diffs:
    report["differences"] = diffs
    md += ["\nHRM minus each arch, final exact match over all tasks:\n"]
    md += [f"- {ablation.difference_line(d)}" for d in diffs]
  plot_curves(results, _MATCH.value, os.path.join(out, "ablation.png"))

  depths = [(h, anchor.L_cycles) for h in sweep_h] + [(anchor.H_cycles, l) for l in sweep_l]
  depths = list(dict.fromkeys(depths))
  sweeps = {}
  if depths:
    sweeps = {f"hrm_s{r['seed']}": ablation.sweep_depth(
        os.path.join(out, f"hrm_s{r['seed']}"), demo, depths, cfg.ablate.eval_per_task)
        for r in results if r["arch"] == "hrm"}
  if depths and sweeps:
    report["sweep"] = sweeps
    sweep = ablation.sweep_table(sweeps)
    md += [f"\nHRM trained at H{anchor.H_cycles} L{anchor.L_cycles}, evaluated at other "
           "depths (same weights):\n", sweep]
    plot_sweep(sweeps, (anchor.H_cycles, anchor.L_cycles),
               os.path.join(out, "ablation_sweep.png"))
  atomic.write_json(os.path.join(out, "ablation.json"), report)
  atomic.write_text(os.path.join(out, "ablation.md"), "\n".join(md) + "\n")
  print("\n" + "\n".join(md))
  print(f"\nwrote {out}/ablation.json, ablation.md, ablation.png"
        + (", ablation_sweep.png" if sweeps else ""))


def trained_span(results: list[dict]) -> str:
  """The steps and tokens the runs trained (the schedule's length where the data ran out
  first is not what they saw)."""
  steps = sorted({r["steps"] for r in results})
  tokens = sorted({r["tokens"] for r in results})
  if len(steps) == 1:
    return f"{steps[0]:,} steps ({tokens[0]:,} tokens)"
  return f"{steps[0]:,}-{steps[-1]:,} steps ({tokens[0]:,}-{tokens[-1]:,} tokens)"


def data_steps(cfg: ml_collections.ConfigDict, sampled) -> int:
  return cfg.train.epochs * sampled.total_length // (cfg.data.rows * cfg.data.row_len)


if __name__ == "__main__":
  cli.run(main, flags_parser=configs.parse_flags)
