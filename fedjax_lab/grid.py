"""Helpers for reproduction scripts (``experiments/<method>/reproduce.py``): run a grid of
configs where finished runs are read back instead of rerun, summarize over seeds, record the
environment, and plot mean curves with their min-max band."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import numpy as np

from fedjax_lab import run_folder, sweep
from fedjax_lab.build import build_federation
from fedjax_lab.config import load_config
from fedjax_lab.plots import plot_curves
from fedjax_lab.run_cache import (  # noqa: F401 (the reproduction scripts' names for them)
  DIVERGED_MARKER,
  diverged,
  last_evaluations,
  recorded_run,
  reuse_conflict,
  run_or_load,
)
from fedjax_lab.tables import format_table


def alpha_variant_runs(config_path, overrides, variants, alphas, seeds, runs_root) -> list:
  """The runs of a reproduction grid as a sweep (``sweep.plan``): the Dirichlet partition's
  alpha times ``variants[name] = (registered method, its options)`` times seeds (each seed
  one federation, ``data.seed`` and ``seed`` set), in ``runs_root/alpha=<a>,method=<name>/
  seed<s>``."""
  partition = load_config(config_path, list(overrides)).data.partition
  method_changes = {
    name: [f"algorithm.name={method}"] + [f"algorithm.{method}.{k}={v}" for k, v in opts.items()]
    for name, (method, opts) in variants.items()
  }
  axes = [
    sweep.Axis(f"data.{partition}.alpha", tuple(f"{alpha:g}" for alpha in alphas)),
    sweep.variants_axis("method", method_changes),
  ]
  return sweep.plan(config_path, list(overrides), axes, list(seeds), pathlib.Path(runs_root))


def alpha_seed_curves(
  config_path: str,
  overrides: list[str],
  variants: dict[str, tuple[str, dict]],
  alphas,
  seeds,
  out_root: pathlib.Path,
) -> tuple[dict[tuple[float, str], list[list[dict]]], int]:
  """Run or read back (``sweep.execute``) the ``alpha_variant_runs``, one line printed each.
  Returns ``({(alpha, name): [metrics of each seed, in the order of seeds]}, runs read
  back)``."""
  curves: dict = {}
  loaded = []

  def collect(run, rows, read_back, seconds):
    alpha, name = (value for _, value in run.cell.values)
    curves.setdefault((float(alpha), name), {})[run.seed] = rows
    loaded.append(read_back)
    accuracy = last_evaluations(rows, "global_accuracy")
    print(f"alpha={alpha} seed={run.seed} {name}: global_accuracy {accuracy:.4f} "
          f"({'read back' if read_back else f'{seconds:.0f} s'})", flush=True)  # fmt: skip

  runs = alpha_variant_runs(config_path, overrides, variants, alphas, seeds, out_root)
  sweep.execute(runs, 1, "", collect)
  ordered = {key: [by_seed[seed] for seed in seeds] for key, by_seed in curves.items()}
  return ordered, sum(loaded)


def environment(started: float, runs_read_back: int, config) -> dict:
  """Wall time, date, hardware and package versions, saved beside every summary."""
  return {
    "wall_seconds": round(time.perf_counter() - started, 1),
    "runs_read_back_not_rerun": runs_read_back,
    **machine_record(),
    "config": config.to_dict(),
  }


def machine_record() -> dict:
  """The date (UTC), the machine, its CPU and the versions of the packages results depend on."""
  import importlib.metadata

  cpu = platform.processor()
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.exists():
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")]  # fmt: skip
    cpu = names[0] if names else cpu
  packages = ("jax", "jaxlib", "flax", "optax", "numpy")
  return {
    "date": time.strftime("%Y-%m-%d", time.gmtime()),
    "machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
    "cpu": f"{cpu}, {os.cpu_count()} cores",
    "python": platform.python_version(),
    **{name: importlib.metadata.version(name) for name in packages},
  }


def write_results_table(
  out_root: pathlib.Path, rows: list[dict], columns: list[str], env: dict
) -> str:
  """A reproduction script's table: ``summary.json`` (rows and ``environment``) and
  ``summary.md`` in ``out_root``; returns the printed table. (A sweep's summary, from its
  own records, is ``sweep.write_summary``.)"""
  table = format_table(rows, columns)
  (out_root / "summary.json").write_text(json.dumps({"rows": rows, **env}, indent=2))
  (out_root / "summary.md").write_text(f"```\n{table}\n```\n\n{json.dumps(env)}\n")
  return table


def curve_panels(curves: dict, panels: list, names: list[str], key: str, panel_title=str) -> dict:
  """``plots.plot_curves``' panels: one per entry of ``panels`` (titled ``panel_title(panel)``),
  in each, per name, the ``(round, key)`` series of the runs ``curves[(panel, name)]`` (lists
  of metric rows); diverged runs and names without a series are left out."""
  out = {}
  for panel in panels:
    lines = {}
    for name in names:
      series = [
        [(m["round"], m[key]) for m in rows if key in m]
        for rows in curves.get((panel, name), [])
        if not diverged(rows)
      ]
      if any(series):
        lines[name] = [s for s in series if s]
    out[panel_title(panel)] = lines
  return out


def algorithm_variant(config_path: str, overrides: list[str], method: str, options: dict):
  """The ``algorithm`` section of ``config_path`` with ``overrides``, switched to ``method``
  with ``options`` set (``algorithm.<method>.<field>=<value>``); any ``algorithm.<method>.*``
  already in ``overrides`` applies too (a benchmark's ``algorithm.ifca.num_clusters=4``)."""
  changes = [f"algorithm.name={method}"]
  changes += [f"algorithm.{method}.{field}={value}" for field, value in options.items()]
  return load_config(config_path, list(overrides) + changes).algorithm


def reproduction_parser(doc: str, here: pathlib.Path, runs: str) -> argparse.ArgumentParser:
  """The options every reproduction script shares: ``--seeds`` (0 1 2), ``--config``
  (``here/base.json``), ``--runs`` (``runs``), ``--out`` (``here/results``), ``--set``
  (config overrides) and ``--summarize`` (tables from ``--out`` only)."""
  parser = argparse.ArgumentParser(
    description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--config", default=str(here / "base.json"))
  parser.add_argument("--runs", default=runs)
  parser.add_argument("--out", default=str(here / "results"))
  parser.add_argument("--set", action="append", default=[], help="config override")
  parser.add_argument("--summarize", action="store_true", help="the tables from --out only")
  parser.add_argument(
    "--compilation-cache",
    default="runs/.jax_cache",
    help="JAX's persistent compilation cache folder: runs that differ only in their seed "
    "compile once ('' turns it off)",
  )
  return parser


def parse_reproduction_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
  """``parser.parse_args()``, then JAX's persistent compilation cache in
  ``--compilation-cache`` (every program cached, however fast it compiled)."""
  args = parser.parse_args()
  if args.compilation_cache and not args.summarize:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return args


def run_file_stem(name: str, alpha: float, seed: int) -> str:
  """``<name>_alpha<alpha>_seed<seed>``: the file name (without ``.jsonl``) of one run's
  committed metrics."""
  return f"{name}_alpha{alpha:g}_seed{seed}"


def write_metrics_file(path: pathlib.Path, metrics) -> None:
  """One run's metric rows to ``path``, one JSON row a line (its folder made if needed)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(run_folder.json_row(row) + "\n" for row in metrics))


def read_metrics_file(path: pathlib.Path) -> list[dict]:
  """The metric rows ``write_metrics_file`` wrote to ``path``."""
  return [json.loads(line) for line in path.read_text().splitlines()]


def save_run_metrics(results: pathlib.Path, name: str, alpha: float, seed: int, metrics) -> None:
  """Write one run's metric rows to ``results/<run_file_stem>.jsonl``."""
  write_metrics_file(results / f"{run_file_stem(name, alpha, seed)}.jsonl", metrics)


def read_run_metrics(results: pathlib.Path) -> dict[tuple[float, str], dict[int, list[dict]]]:
  """``(alpha, name) -> {seed: metric rows}`` from the files ``save_run_metrics`` wrote."""
  runs: dict = {}
  for path in sorted(results.glob("*_alpha*_seed*.jsonl")):
    name, _, rest = path.stem.rpartition("_alpha")
    alpha, _, seed = rest.partition("_seed")
    runs.setdefault((float(alpha), name), {})[int(seed)] = read_metrics_file(path)
  return runs


def run_configs(configs: dict, report) -> None:
  """Run or read back each of ``configs`` (``{key: ExperimentConfig}``, the key the caller's
  cell and seed, its seed last) through ``sweep.execute``: the runs of one federation (one
  ``data`` config) one after another on it, built once; a finished run read back, an
  interrupted one resumed, a diverged one recorded. ``report(key, metrics)`` after each, in
  the order run."""
  planned, keys = [], {}
  for key, config in configs.items():
    cell = sweep.Cell((("key", repr(key)),), ())
    planned.append(sweep.PlannedRun(cell, key[-1], config))
    keys[id(planned[-1])] = key
  sweep.execute(planned, 1, "", lambda run, rows, read_back, seconds: report(keys[id(run)], rows))


def run_alpha_seed_grid(
  config_path: str,
  variants: dict[str, tuple[str, dict]],
  alphas,
  seeds,
  runs_root: str,
  results: pathlib.Path,
  report=None,
  overrides=(),
) -> None:
  """Run or read back the ``alpha_variant_runs`` (after the config's own ``overrides``), each
  run's metrics saved to ``results`` (``save_run_metrics``) and one line printed (with
  ``report(metrics)``). A run this call trained also appends its wall time to
  ``results/wall_times.jsonl`` (``{"run", "wall_seconds", "resumed", "machine"}``; ``resumed``
  when it continued from a checkpoint, so the time is of the part run here only)."""

  def save(run, rows, read_back, seconds):
    alpha, name = (value for _, value in run.cell.values)
    save_run_metrics(results, name, float(alpha), run.seed, rows)
    if not read_back:
      record = {
        "run": run_file_stem(name, float(alpha), run.seed),
        "wall_seconds": round(seconds, 1),
        "resumed": resumed[id(run)],
        "machine": machine_record(),
      }
      with (results / "wall_times.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")
    print(f"alpha {alpha} seed {run.seed} {name}: {report(rows) if report else 'done'}", flush=True)

  runs = alpha_variant_runs(config_path, overrides, variants, alphas, seeds, runs_root)
  resumed = {id(run): run_folder.holds_run_output(pathlib.Path(run.config.out_dir)) for run in runs}
  sweep.execute(runs, 1, "", save)


def summarize_run_metrics(results: pathlib.Path, summary_tables, names, panel_title) -> str:
  """From the per-run metrics in ``results`` (``read_run_metrics``): ``summary_tables(runs)``
  written to ``results/summary.md`` and returned, and the global-accuracy curves of ``names``
  (one panel per alpha, titled ``panel_title(alpha)``) to ``results/accuracy.png``."""
  runs = read_run_metrics(results)
  tables = summary_tables(runs)
  (results / "summary.md").write_text(tables)
  alphas = sorted({alpha for alpha, _ in runs})
  present = [name for name in names if any((alpha, name) in runs for alpha in alphas)]
  curves = {key: list(by_seed.values()) for key, by_seed in runs.items()}
  panels = curve_panels(curves, alphas, present, "global_accuracy", panel_title)
  plot_curves(panels, results / "accuracy.png", "global test accuracy")
  return tables


def read_records(results: pathlib.Path) -> list[dict]:
  """The per-seed records of ``results/per_seed.jsonl`` ([] if there is none yet)."""
  path = results / "per_seed.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_tuning_grid(
  config_path: str,
  overrides: list[str],
  candidates: dict[str, list[str]],
  seeds,
  runs_root: str,
  metrics: dict[str, tuple[str, int]],
) -> list[dict]:
  """Each candidate (config overrides on top of ``overrides``) on each tuning seed
  (``data.seed`` and ``seed``), run or read back in ``runs_root/seed<s>/<candidate>``.

  Returns one record per (candidate, seed): ``{"candidate", "seed"}`` and, for each
  ``metrics[label] = (metric key, count)``, ``last_evaluations(rows, key, count)``."""
  records = []
  for seed in seeds:
    seeded = list(overrides) + [f"data.seed={seed}", f"seed={seed}"]
    data = build_federation(load_config(config_path, seeded).data)
    for name, changes in candidates.items():
      out_dir = f"out_dir={runs_root}/seed{seed}/{name}"
      rows, _ = run_or_load(load_config(config_path, seeded + changes + [out_dir]), data)
      record = {"candidate": name, "seed": seed}
      record.update({label: last_evaluations(rows, *how) for label, how in metrics.items()})
      records.append(record)
      print(json.dumps(record), flush=True)
  return records


def tuning_table(records: list[dict], key: str, columns: dict[str, str]) -> str:
  """One row per candidate: the mean over its seeds of each ``columns[label] = record field``
  (``key`` too), and ``*`` on the candidate with the highest mean ``key``: the one chosen."""
  names = list(dict.fromkeys(r["candidate"] for r in records))
  means = {
    name: {f: float(np.mean([r[f] for r in records if r["candidate"] == name])) for f in records[0]
           if f not in ("candidate", "seed")}
    for name in names
  }  # fmt: skip
  best = max(names, key=lambda name: means[name][key])
  seeds = {name: sum(r["candidate"] == name for r in records) for name in names}
  rows = [
    {"candidate": name, **{label: f"{means[name][f]:.3f}" for label, f in columns.items()},
     "seeds": seeds[name], "chosen": "*" if name == best else ""}
    for name in names
  ]  # fmt: skip
  return format_table(rows, list(rows[0]))


def tuning_main(
  doc: str,
  config: pathlib.Path,
  runs: str,
  results: pathlib.Path,
  overrides: list[str],
  candidates: dict[str, list[str]],
  seeds,
  metrics: dict[str, tuple[str, int]],
  table,
) -> None:
  """A tuning script's command line (``reproduction_parser``'s options): unless
  ``--summarize``, ``run_tuning_grid`` with these arguments, its records written to
  ``--out/per_seed.jsonl``; then ``table(records)`` written to ``--out/summary.md`` and
  printed."""
  parser = reproduction_parser(doc, config.parent, runs)
  parser.set_defaults(config=str(config), out=str(results))
  args = parse_reproduction_args(parser)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if not args.summarize:
    records = run_tuning_grid(
      args.config, overrides + args.set, candidates, seeds, args.runs, metrics
    )
    (out / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  text = table(read_records(out))
  (out / "summary.md").write_text(f"```\n{text}\n```\n")
  print(text)
