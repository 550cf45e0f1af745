"""``fedjax-lab sweep``: a base config times a grid of overrides times seeds, each run in its
own folder, then one summary over seeds.

  fedjax-lab sweep --config experiments/quickstart/config.json \\
      --grid algorithm.name=fedavg,fedprox data.dirichlet.alpha=0.1,0.5 --seeds 0-2 \\
      --baseline algorithm.name=fedavg --out runs/sweep --jobs 2 rounds=30

A cell is one value per grid field; its run with seed ``s`` (``seed=s`` and ``data.seed=s``:
each seed is another federation and another training) lives in ``OUT/<cell>/seed<s>``. Every
config is built and validated before the first run. A finished run is read back, not rerun;
an interrupted one resumes from its checkpoint; a diverged one is recorded as such
(``run_cache.run_or_load``): running the same command again completes a sweep.

The summary, in ``OUT/summary``: per metric a table of each cell's mean, sample std (ddof=1)
and n over seeds, and with ``--baseline`` the paired difference with the baseline cell (the
same values but the baseline field's) with its 95% t-interval and verdict
(``stats.paired_difference``); the curves (mean and min-max band over seeds, a panel per
value of the other fields); ``per_seed.jsonl``, one record per run with its final values,
and ``curves.jsonl``, every run's evaluated rows, from which ``--summarize`` recomputes it all.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import itertools
import json
import multiprocessing
import os
import pathlib
import signal
import threading
import time

from fedjax_lab import stats
from fedjax_lab.config import ExperimentConfig, config_from_dict, load_config
from fedjax_lab.plots import plot_curves
from fedjax_lab.tables import format_table

DEFAULT_METRICS = ("global_accuracy", "client_accuracy_mean", "client_accuracy_p10")
SUMMARY_FOLDER = "summary"


@dataclasses.dataclass(frozen=True)
class Axis:
  """One grid dimension: a ``field`` and the ``values`` it takes, as override strings; or,
  with ``changes``, named bundles of overrides (``{"fedmr-layer": ("algorithm.name=fedmr",
  "algorithm.fedmr.granularity=layer")}``), ``field`` then only labels the dimension."""

  field: str
  values: tuple[str, ...]
  changes: dict[str, tuple[str, ...]] | None = None

  def overrides(self, value: str) -> list[str]:
    """The overrides that set this dimension to ``value``."""
    return list(self.changes[value]) if self.changes else [f"{self.field}={value}"]


def variants_axis(field: str, variants: dict[str, list[str]]) -> Axis:
  """An ``Axis`` of named override bundles (methods with their options, say)."""
  return Axis(field, tuple(variants), {name: tuple(c) for name, c in variants.items()})


def split_values(text: str) -> list[str]:
  """``"a,b,[1,2]"`` -> ``["a", "b", "[1,2]"]``: commas inside brackets belong to a value."""
  values, depth, current = [], 0, ""
  for character in text:
    depth += {"[": 1, "]": -1}.get(character, 0)
    if character == "," and depth == 0:
      values.append(current)
      current = ""
    else:
      current += character
  return values + [current]


def parse_axis(text: str) -> Axis:
  """``"field=v1,v2"`` as an ``Axis``; ``ValueError`` in one line otherwise."""
  field, _, values = text.partition("=")
  parsed = tuple(v.strip() for v in split_values(values))
  if not field.strip() or not all(parsed) or len(set(parsed)) != len(parsed):
    raise ValueError(f"--grid must be field=value1,value2,... with distinct values, got {text!r}")
  return Axis(field.strip(), parsed)


def parse_seeds(text: str) -> list[int]:
  """``"0-4"``, ``"0,2,5"`` or ``"3"`` as a list of distinct seeds >= 0."""
  try:
    if "-" in text:
      first, last = (int(part) for part in text.split("-"))
      seeds = list(range(first, last + 1))
    else:
      seeds = [int(part) for part in text.split(",")]
  except ValueError:
    seeds = []
  if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
    raise ValueError(f"--seeds must be A-B or a list like 0,1,2 of seeds >= 0, got {text!r}")
  return seeds


def short_names(axes: list[Axis]) -> dict[str, str]:
  """Each grid field by its last dotted part (``alpha``), or whole where two share it."""
  last = [axis.field.rsplit(".", 1)[-1] for axis in axes]
  return {a.field: name if last.count(name) == 1 else a.field for a, name in zip(axes, last)}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One value per grid dimension: ``values`` as ``(field, value)`` pairs in grid order, and
  the ``changes`` (overrides) that set them."""

  values: tuple[tuple[str, str], ...]
  changes: tuple[str, ...]

  def name(self, short: dict[str, str]) -> str:
    """``"name=fedavg,alpha=0.1"``: the cell's folder and label."""
    return ",".join(f"{short[field]}={value}" for field, value in self.values)

  def overrides(self) -> list[str]:
    return list(self.changes)


def grid_cells(axes: list[Axis]) -> list[Cell]:
  """Every combination of the axes' values, the last axis varying fastest."""
  cells = []
  for combo in itertools.product(*(axis.values for axis in axes)):
    changes = tuple(c for axis, value in zip(axes, combo) for c in axis.overrides(value))
    cells.append(Cell(tuple(zip((a.field for a in axes), combo)), changes))
  return cells


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  cell: Cell
  seed: int
  config: ExperimentConfig


def plan(
  config_path: str | None, overrides: list[str], axes: list[Axis], seeds, out: pathlib.Path
) -> list[PlannedRun]:
  """Every (cell, seed)'s config, validated now: a bad value is one line naming it before any
  run starts. Out folders: ``out/<cell name>/seed<s>``. Refused in one line, before any run:
  two cells that resolve to the same run (a value spelled twice, ``0.1,0.10``; an option of a
  method the cell does not run), and a cell whose folder holds another run, finished or not
  (``run_cache.reuse_conflict``: a sweep never replaces a run)."""
  from fedjax_lab.run_cache import reuse_conflict

  short = short_names(axes)
  planned, seen = [], {}
  for cell in grid_cells(axes):
    for seed in seeds:
      changes = [*overrides, *cell.overrides(), f"seed={seed}", f"data.seed={seed}"]
      changes.append(f"out_dir={out / cell.name(short) / f'seed{seed}'}")
      try:
        config = load_config(config_path, changes)
      except ValueError as error:
        raise ValueError(f"cell {cell.name(short)}, seed {seed}: {error}") from None
      same = seen.setdefault(run_identity(config), cell)
      if same is not cell:
        raise ValueError(
          f"cells {same.name(short)} and {cell.name(short)} are the same run (their values "
          "resolve to one config: a value written twice, or an option of a method the cell "
          "does not run); drop one"
        )
      conflict = reuse_conflict(config)
      if conflict is not None:
        raise ValueError(
          f"cell {cell.name(short)}, seed {seed}: {config.out_dir} holds another run "
          f"({conflict}); it is kept: choose another --out, or delete that folder to rerun it"
        )
      planned.append(PlannedRun(cell, seed, config))
  return planned


def run_identity(config: ExperimentConfig) -> str:
  """What makes two planned runs the same run: the resolved config but its folder."""
  return json.dumps({**config.to_dict(), "out_dir": None}, sort_keys=True)


def use_compilation_cache(folder: pathlib.Path) -> None:
  """JAX's persistent compilation cache in ``folder``: runs that differ only in their seed
  compile once (every program cached, however fast it compiled)."""
  import jax

  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run_one(config_dict: dict, cache: str) -> tuple[list[dict], bool]:
  """One planned run in a worker process: ``run_cache.run_or_load`` (read back when finished,
  resumed when interrupted, recorded when diverged). Returns (rows, read back)."""
  from fedjax_lab.run_cache import run_or_load

  if cache:
    use_compilation_cache(pathlib.Path(cache))
  return run_or_load(config_from_dict(config_dict), None)


def execute(planned: list[PlannedRun], jobs: int, cache: str, report) -> None:
  """Run or read back every planned run, ``jobs`` at a time (``jobs > 1``: worker processes,
  started fresh, so JAX is never forked); ``report(run, rows, read_back, seconds)`` after
  each. In one process, the runs on one federation (the same ``data`` config: a seed's cells)
  run one after another on it, built once. Workers never outlive the sweep: on any exception
  here (``report``'s, an interrupt) each is asked to stop as a run stops on SIGTERM (after its
  round, checkpoint written) and killed after ``WORKER_GRACE_SECONDS``; a worker whose sweep
  was killed exits by itself (``exit_with_parent``)."""
  if jobs == 1:
    from fedjax_lab.build import build_federation
    from fedjax_lab.run_cache import recorded_run, run_or_load

    by_federation: dict[str, list[PlannedRun]] = {}
    for run in planned:
      by_federation.setdefault(repr(run.config.data), []).append(run)
    for runs in by_federation.values():
      data = None
      for run in runs:
        started = time.perf_counter()
        if data is None and recorded_run(run.config) is None:
          data = build_federation(run.config.data)
        rows, read_back = run_or_load(run.config, data)
        report(run, rows, read_back, time.perf_counter() - started)
    return
  context = multiprocessing.get_context("spawn")
  pool = concurrent.futures.ProcessPoolExecutor(
    jobs, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
  )
  try:
    futures = {pool.submit(timed_run, run.config.to_dict(), cache): run for run in planned}
    for future in concurrent.futures.as_completed(futures):
      rows, read_back, seconds = future.result()
      report(futures[future], rows, read_back, seconds)
  except BaseException:
    stop_workers(pool)
    raise
  pool.shutdown()


WORKER_GRACE_SECONDS = 60.0


def stop_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
  """Cancel the runs not started; SIGTERM the workers (each run stops after its round with a
  checkpoint), then SIGKILL any still alive after ``WORKER_GRACE_SECONDS``."""
  processes = list((pool._processes or {}).values())  # noqa: SLF001 (no public handle)
  pool.shutdown(wait=False, cancel_futures=True)
  for process in processes:
    if process.is_alive():
      process.terminate()
  deadline = time.monotonic() + WORKER_GRACE_SECONDS
  for process in processes:
    process.join(max(0.0, deadline - time.monotonic()))
    if process.is_alive():
      process.kill()
      process.join()


def exit_with_parent(parent: int) -> None:
  """A worker's initializer: a thread that ends the worker at once when process ``parent``
  (the sweep) is gone, killed without the chance to stop it."""

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(1.0)
    os._exit(1)

  threading.Thread(target=watch, daemon=True).start()


def timed_run(config_dict: dict, cache: str) -> tuple[list[dict], bool, float]:
  """``run_one`` in a worker, with its wall seconds. A run the sweep stopped (SIGTERM: after
  its round, its checkpoint written) ends the worker: the sweep is going away, and a worker
  left waiting for its next task would only be killed after ``WORKER_GRACE_SECONDS``."""
  from fedjax_lab.run_hooks import RunInterrupted

  started = time.perf_counter()
  try:
    return (*run_one(config_dict, cache), time.perf_counter() - started)
  except RunInterrupted:
    os._exit(2)


def final_value(rows: list[dict], metric: str, last: int) -> float:
  """The mean of ``metric`` over a run's last ``last`` evaluations; NaN for a diverged run or
  one that never logged it."""
  from fedjax_lab.run_cache import last_evaluations

  return last_evaluations(rows, metric, last)


def records(planned: list[PlannedRun], metrics, last: int) -> tuple[list, list]:
  """``(per_seed, curves)``: per run, its grid values, seed and final ``metrics``; and its
  evaluated rows (every row with one of ``metrics``), read from its folder."""
  from fedjax_lab import run_folder
  from fedjax_lab.run_cache import DIVERGED_MARKER

  per_seed, curves = [], []
  for run in planned:
    folder = pathlib.Path(run.config.out_dir)
    rows = run_folder.read_metrics(folder)
    if (folder / DIVERGED_MARKER).exists():
      rows = rows + [{"round": run.config.rounds, "diverged": True}]
    grid = dict(run.cell.values)
    values = {metric: final_value(rows, metric, last) for metric in metrics}
    per_seed.append({"grid": grid, "seed": run.seed, "rounds": run.config.rounds, **values})
    evaluated = [
      {k: v for k, v in row.items() if k == "round" or k in metrics}
      for row in rows
      if any(metric in row for metric in metrics) or row.get("diverged")
    ]
    curves.append({"grid": grid, "seed": run.seed, "rows": evaluated})
  return per_seed, curves


def _by_cell(entries: list[dict]) -> dict[tuple, dict[int, dict]]:
  cells: dict[tuple, dict[int, dict]] = {}
  for entry in entries:
    cells.setdefault(tuple(entry["grid"].items()), {})[entry["seed"]] = entry
  return cells


def summary_tables(
  per_seed: list[dict], metrics, baseline: tuple[str, str] | None, last: int
) -> str:
  """Per metric: each cell's ``mean ± std (n)`` over seeds and, with a ``baseline`` (field,
  value), ``cell - baseline`` paired by seed: mean, 95% interval, verdict."""
  cells = _by_cell(per_seed)
  fields = list(per_seed[0]["grid"]) if per_seed else []
  short = short_names([Axis(field, ()) for field in fields])
  sections = []
  for metric in metrics:
    rows = []
    for key, by_seed in cells.items():
      values = [entry[metric] for entry in by_seed.values()]
      d = stats.describe(values)
      row = {short[f]: v for f, v in key}
      row.update(mean=f"{d['mean']:.4f}", std=f"{d['std']:.4f}", n=d["n"])
      if d["n_missing"]:
        row["diverged"] = d["n_missing"]
      if baseline is not None:
        row[f"paired diff vs {short[baseline[0]]}={baseline[1]}"] = _paired(
          cells, key, baseline, metric
        )
      rows.append(row)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    what = "the final evaluation" if last == 1 else f"the mean of the last {last} evaluations"
    sections.append(f"### {metric} ({what})\n\n```\n{format_table(rows, columns)}\n```\n")
  return "\n".join(sections)


def _paired(cells, key: tuple, baseline: tuple[str, str], metric: str) -> str:
  """``cell - baseline cell`` over their common seeds, or ``baseline`` for the baseline."""
  field, value = baseline
  other = tuple((f, value if f == field else v) for f, v in key)
  if other == key:
    return "baseline"
  if other not in cells:
    return "no baseline cell"
  seeds = sorted(set(cells[key]) & set(cells[other]))
  a = [cells[key][s][metric] for s in seeds]
  b = [cells[other][s][metric] for s in seeds]
  return stats.format_paired(a, b, digits=4)


def curve_panels(curves: list[dict], metric: str, compared: str) -> dict:
  """``plots.plot_curves``' panels of ``metric``: one per combination of the grid values but
  ``compared``'s, a line per ``compared`` value over its seeds; diverged runs left out."""
  short = short_names([Axis(f, ()) for f in curves[0]["grid"]]) if curves else {}
  panels: dict[str, dict[str, list]] = {}
  for curve in curves:
    grid = curve["grid"]
    title = ", ".join(f"{short[f]}={v}" for f, v in grid.items() if f != compared) or metric
    points = [(r["round"], r[metric]) for r in curve["rows"] if metric in r]
    if points and not any(r.get("diverged") for r in curve["rows"]):
      label = f"{short.get(compared, '')}={grid.get(compared, '')}"
      panels.setdefault(title, {}).setdefault(label, []).append(points)
  return panels


def write_summary(
  out: pathlib.Path,
  per_seed: list[dict],
  curves: list[dict],
  metrics,
  baseline: tuple[str, str] | None,
  last: int,
) -> str:
  """``OUT/summary``: ``summary.md`` (the tables), ``per_seed.jsonl``, ``curves.jsonl`` and a
  ``<metric>.png`` per metric; returns the tables."""
  folder = out / SUMMARY_FOLDER
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "per_seed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_seed))
  (folder / "curves.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curves))
  tables = summary_tables(per_seed, metrics, baseline, last)
  (folder / "summary.md").write_text(tables)
  fields = list(per_seed[0]["grid"]) if per_seed else []
  compared = baseline[0] if baseline else (fields[0] if fields else "")
  for metric in metrics:
    panels = curve_panels(curves, metric, compared)
    if panels:
      plot_curves(panels, folder / f"{metric}.png", f"{metric} (mean, min-max over seeds)")
  return tables


def read_summary_inputs(out: pathlib.Path) -> tuple[list[dict], list[dict]]:
  """``(per_seed, curves)`` as ``write_summary`` wrote them."""
  folder = out / SUMMARY_FOLDER
  read = lambda name: [json.loads(line) for line in (folder / name).read_text().splitlines()]
  return read("per_seed.jsonl"), read("curves.jsonl")


def parser() -> argparse.ArgumentParser:
  sweep = argparse.ArgumentParser(
    prog="fedjax-lab sweep",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sweep.add_argument("--config", help="the base config (.json or .toml)")
  sweep.add_argument(
    "--grid", nargs="+", action="extend", default=[], metavar="FIELD=V1,V2",
    help="fields and their values; the cells are every combination (a field given one value "
    "applies to every run, like an override)",
  )  # fmt: skip
  sweep.add_argument("--seeds", default="0", help="A-B or a list: 0-4, 0,1,2 (default 0)")
  sweep.add_argument("--out", default="runs/sweep", help="the sweep's folder")
  sweep.add_argument("--jobs", type=int, default=1, help="runs at once (worker processes)")
  sweep.add_argument(
    "--baseline", metavar="FIELD=VALUE",
    help="compare each cell with the one where FIELD is VALUE, paired by seed",
  )  # fmt: skip
  sweep.add_argument(
    "--metrics",
    help=f"comma-separated metrics to summarize (default {','.join(DEFAULT_METRICS)}); a "
    "metric named here that a run does not log is refused",
  )
  sweep.add_argument(
    "--last", type=int, default=1, help="a run's value: the mean of its last N evaluations"
  )
  sweep.add_argument(
    "--summarize", action="store_true", help="the summary from OUT/summary's records only"
  )
  sweep.add_argument("overrides", nargs="*", help="dotted overrides for every run")
  return sweep


def parse_baseline(text: str | None, axes: list[Axis]) -> tuple[str, str] | None:
  """``--baseline FIELD=VALUE``: a grid field and one of its values."""
  if text is None:
    return None
  field, _, value = text.partition("=")
  allowed = {axis.field: axis.values for axis in axes}
  if field not in allowed or value not in allowed[field]:
    choices = "; ".join(f"{f}={'|'.join(v)}" for f, v in allowed.items()) or "no grid"
    raise ValueError(
      f"--baseline must be a grid field and one of its values ({choices}), got {text!r}"
    )
  return field, value


def axes_of(per_seed: list[dict]) -> list[Axis]:
  """The grid of recorded runs: each field with its values in the order first seen."""
  fields = list(per_seed[0]["grid"]) if per_seed else []
  values = lambda f: tuple(dict.fromkeys(str(r["grid"][f]) for r in per_seed))
  return [Axis(field, values(field)) for field in fields]


# Fields a sweep sets itself: a grid or an override of them would be overwritten unseen.
SWEEP_FIELDS = {"seed": "--seeds", "data.seed": "--seeds", "out_dir": "--out"}
SWEEP_LOCK = ".fedjax-lab-sweep.lock"


class SweepInterrupted(RuntimeError):
  """SIGINT or SIGTERM stopped a sweep; the message says which runs the same command resumes."""


def refuse_sweep_fields(axes: list[Axis], overrides: list[str]) -> None:
  """One line for a grid field or override that the sweep sets itself (``SWEEP_FIELDS``)."""
  named = [axis.field for axis in axes] + [o.partition("=")[0].strip() for o in overrides]
  for field in named:
    if field in SWEEP_FIELDS:
      raise ValueError(
        f"{field} is set by the sweep for each run (seed and data.seed from --seeds, out_dir "
        f"from --out); use {SWEEP_FIELDS[field]} instead of setting {field}"
      )


def check_metrics_logged(metrics: list[str], run: PlannedRun, rows: list[dict], name: str) -> None:
  """Refuses a ``--metrics`` name that a run which did not diverge never logged."""
  if any(row.get("diverged") for row in rows) or not rows:
    return
  logged = sorted({key for row in rows for key in row} - {"round"})
  for metric in metrics:
    if not any(metric in row for row in rows):
      raise ValueError(
        f"--metrics: {metric!r} is not a metric of the runs ({name} seed {run.seed} logs "
        f"{', '.join(logged)})"
      )


def resumable_runs(planned: list[PlannedRun], short: dict[str, str]) -> str:
  """``"2 of 6 runs finished; 3 resume from their checkpoints (name=fedavg seed 1, ...)"``."""
  from fedjax_lab import run_folder
  from fedjax_lab.run_cache import recorded_run

  finished = [run for run in planned if recorded_run(run.config) is not None]
  started = [
    f"{run.cell.name(short) or 'base'} seed {run.seed}"
    for run in planned
    if run not in finished
    and (pathlib.Path(run.config.out_dir) / run_folder.CHECKPOINT_DIR).is_dir()
    and any((pathlib.Path(run.config.out_dir) / run_folder.CHECKPOINT_DIR).iterdir())
  ]
  resumed = f"{len(started)} resume from their checkpoints" if started else "none started"
  names = f" ({', '.join(started)})" if started else ""
  return f"{len(finished)} of {len(planned)} runs finished, {resumed}{names}"


def main(argv: list[str]) -> int:
  """The ``sweep`` subcommand (``cli.main`` reports its ``ValueError``s in one line)."""
  args = parser().parse_intermixed_args(argv)
  out = pathlib.Path(args.out).expanduser()
  metrics = [m for m in (args.metrics or ",".join(DEFAULT_METRICS)).split(",") if m]
  if args.jobs < 1:
    raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
  if args.last < 1:
    raise ValueError(f"--last must be >= 1, got {args.last}")
  given = [parse_axis(text) for text in args.grid]
  fields = [axis.field for axis in given]
  if len(set(fields)) != len(fields):
    raise ValueError(f"--grid names a field twice: {', '.join(fields)}")
  refuse_sweep_fields(given, args.overrides)
  axes = [axis for axis in given if len(axis.values) > 1]
  overrides = args.overrides + [f"{a.field}={a.values[0]}" for a in given if len(a.values) == 1]
  if args.summarize:
    per_seed, curves = read_summary_inputs(out)
    axes = axes_of(per_seed)
    unknown = [m for m in metrics if not any(m in entry for entry in per_seed)]
    if unknown and args.metrics:
      raise ValueError(f"--metrics: {', '.join(unknown)} not in {out / SUMMARY_FOLDER}'s records")
  baseline = parse_baseline(args.baseline, axes)
  if not args.summarize:
    seeds = parse_seeds(args.seeds)
    planned = plan(args.config, overrides, axes, seeds, out)
    from fedjax_lab import run_folder

    lock = run_folder.lock_folder(out, SWEEP_LOCK, "sweep")
    try:
      per_seed, curves = _run_sweep(planned, axes, args, out, metrics, seeds)
    finally:
      lock.close()
  print(write_summary(out, per_seed, curves, metrics, baseline, args.last))
  print(f"summary in {out / SUMMARY_FOLDER}")
  return 0


def _run_sweep(planned, axes, args, out: pathlib.Path, metrics, seeds) -> tuple[list, list]:
  """``execute`` the planned runs, a line per run; SIGTERM stops it as Ctrl-C does, with
  ``SweepInterrupted`` saying what the same command resumes. Returns ``records``."""
  from fedjax_lab.run_hooks import RunInterrupted

  short = short_names(axes)
  cache = str(out / ".jax_cache")
  if args.jobs == 1:
    use_compilation_cache(pathlib.Path(cache))
  done = iter(range(1, len(planned) + 1))

  def report(run: PlannedRun, rows, read_back: bool, seconds: float) -> None:
    name = run.cell.name(short) or "base"
    if args.metrics:  # the defaults may not all apply (no client test splits, no global model)
      check_metrics_logged(metrics, run, rows, name)
    values = " ".join(
      f"{m} {final_value(rows, m, args.last):.4f}" for m in metrics if any(m in r for r in rows)
    )
    how = "read back" if read_back else f"{seconds:.0f} s"
    print(f"[{next(done)}/{len(planned)}] {name} seed {run.seed}: {values} ({how})", flush=True)

  def interrupt(signum, frame):
    raise KeyboardInterrupt

  print(f"sweep: {len(planned) // len(seeds)} cells x {len(seeds)} seeds in {out}", flush=True)
  main_thread = threading.current_thread() is threading.main_thread()
  previous = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
  try:
    execute(planned, args.jobs, cache, report)
  except (KeyboardInterrupt, RunInterrupted):
    raise SweepInterrupted(
      f"interrupted: {resumable_runs(planned, short)}; the same command continues the sweep"
    ) from None
  finally:
    if main_thread:
      signal.signal(signal.SIGTERM, previous)
  return records(planned, metrics, args.last)
