"""``fedjax-lab``: run an experiment from a config file with dotted overrides.

  fedjax-lab --config experiments/quickstart/config.json rounds=50 data.dirichlet.alpha=0.1
  fedjax-lab --config runs/x/config.json --resume
  fedjax-lab sweep --config C --grid algorithm.name=fedavg,fedprox --seeds 0-2   (sweep.py)
  fedjax-lab report runs/sweep                                                   (report.py)

Options and overrides may come in any order. Every expected failure (config, data, output
folder, checkpoint, divergence, interrupt) is one line naming the cause, exit code 2;
``--debug`` shows the traceback instead. JAX is imported only once the arguments parse.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pathlib
import sys


def load_plugin(spec: str) -> None:
  """Import a module by dotted name or a ``.py`` file by path; a plugin registers its methods,
  aggregators, sources or models when imported (docs/writing_a_method.md), and may
  add hooks to the run (``fedjax_lab.hooks.install``)."""
  if spec.endswith(".py"):
    path = pathlib.Path(spec).resolve()
    loaded = sys.modules.get(path.stem)
    if loaded is not None and getattr(loaded, "__file__", None) == str(path):
      return  # already imported (and registered) in this process
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    if module_spec is None or not path.exists():
      raise FileNotFoundError(f"--plugin {spec}: no such file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[path.stem] = module
    module_spec.loader.exec_module(module)
  else:
    importlib.import_module(spec)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="fedjax-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--config", help="a .json or .toml experiment config")
  parser.add_argument(
    "--plugin",
    action="append",
    default=[],
    help="a module or .py file to import first (it may register algorithms, "
    "aggregators, sources, partitioners or models); repeatable",
  )
  parser.add_argument(
    "--resume",
    action="store_true",
    help="continue the run in out_dir from its newest checkpoint that restores",
  )
  parser.add_argument(
    "--overwrite",
    action="store_true",
    help="start afresh in an out_dir that holds another run (its run files are deleted)",
  )
  parser.add_argument("--no-progress", action="store_true")
  parser.add_argument(
    "--print-config",
    action="store_true",
    help="print the resolved config, with what `auto` picked, and exit",
  )
  parser.add_argument(
    "--profile",
    metavar="ROUNDS",
    help="trace round N or rounds A-B with jax.profiler into out_dir/profile (Perfetto) and "
    "print the time per XLA op",
  )
  parser.add_argument("--debug", action="store_true", help="show tracebacks of failures")
  parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. local.epochs=2")
  return parser


def _expected_failures() -> tuple[type[BaseException], ...]:
  from fedjax_lab.checkpoint import CheckpointError
  from fedjax_lab.run_folder import RunFolderError
  from fedjax_lab.run_hooks import RunInterrupted, TrainingDivergedError
  from fedjax_lab.sweep import SweepInterrupted

  return (
    ValueError,  # config and data checks
    OSError,  # files: missing data, unwritable or full disk
    ImportError,  # plugins
    RunFolderError,
    CheckpointError,
    TrainingDivergedError,
    RunInterrupted,
    SweepInterrupted,
    KeyboardInterrupt,  # a second Ctrl-C, or one before the first round
  )


def _describe(error: BaseException, args: argparse.Namespace) -> str:
  from fedjax_lab.run_hooks import RunInterrupted

  if isinstance(error, KeyboardInterrupt):
    kept = getattr(args, "checkpoints", None)
    if kept is not None and kept.is_dir() and any(kept.iterdir()):
      return "interrupted (checkpoints already written are kept; --resume continues)"
    return "interrupted before any checkpoint was written (nothing to resume)"
  if isinstance(error, RunInterrupted):
    return f"RunInterrupted: {error.describe(args.plugin)}"
  if isinstance(error, OSError) and error.strerror:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror}"
  return f"{type(error).__name__}: {error}"


def _main(args: argparse.Namespace) -> int:
  for plugin in args.plugin:
    load_plugin(plugin)
  from fedjax_lab.config import load_config

  config = load_config(args.config, args.overrides)
  config = _resume_where_named(config, args)
  from fedjax_lab import profiling

  profile = None if args.profile is None else profiling.parse_rounds(args.profile)
  if profile is not None and profile[1] > config.rounds:
    raise ValueError(
      f"--profile must name rounds within rounds={config.rounds}, got {args.profile}"
    )
  from fedjax_lab import run_folder

  args.checkpoints = pathlib.Path(config.out_dir).expanduser() / run_folder.CHECKPOINT_DIR
  if args.print_config:
    import dataclasses

    from fedjax_lab.build import resolve_execution

    resolved = dataclasses.asdict(resolve_execution(config))
    print(json.dumps({**config.to_dict(), "resolved_execution": resolved}, indent=2))
    return 0
  from fedjax_lab import hooks
  from fedjax_lab.runner import run
  from fedjax_lab.tables import SUMMARY_COLUMNS, format_table, summary_row

  result = run(
    config,
    resume=args.resume,
    overwrite=args.overwrite,
    progress=not args.no_progress,
    profile=profile,
    hooks=hooks.installed(),
  )
  print(format_table([summary_row(config.algorithm.name, result)], SUMMARY_COLUMNS))
  print(f"metrics, config and plot in {result.out_dir}")
  traces = result.out_dir / profiling.PROFILE_FOLDER
  if profile is not None and traces.is_dir():
    print(f"\ntime per XLA op, rounds {profile[0]}-{profile[1]}:")
    print(profiling.op_table(profiling.newest_trace(traces)))
  return 0


def _resume_where_named(config, args: argparse.Namespace):
  """``--resume --config DIR/config.json`` of a run folder continues ``DIR`` (a copied or
  moved run folder keeps the ``out_dir`` it was started with), unless ``out_dir=`` is given."""
  import dataclasses

  from fedjax_lab import run_folder

  if not (args.resume and args.config) or any(o.startswith("out_dir=") for o in args.overrides):
    return config
  folder = pathlib.Path(args.config).parent
  if pathlib.Path(args.config).name != run_folder.CONFIG_FILE:
    return config
  if not run_folder.holds_run_output(folder):
    return config
  return dataclasses.replace(config, out_dir=str(folder))


def _subcommand(name: str):
  """``sweep`` and ``report``: each a module's ``main(argv) -> exit code``."""
  return importlib.import_module(f"fedjax_lab.{name}").main


SUBCOMMANDS = ("sweep", "report")


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] in SUBCOMMANDS:
    debug = "--debug" in argv
    args = argparse.Namespace(debug=debug, plugin=[], checkpoints=None)
    command = lambda: _subcommand(argv[0])([a for a in argv[1:] if a != "--debug"])
  else:
    args = _parser().parse_intermixed_args(argv)
    command = lambda: _main(args)
  try:
    return command()
  except BaseException as error:
    if args.debug or not isinstance(error, _expected_failures()):
      raise
    print(f"fedjax-lab: {_describe(error, args)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
