"""``fedjax-lab report RUNS... [--out report.html]``: one static HTML page comparing runs, or
the cells of a sweep, readable offline (plots are inline SVG, no script, no network).

Each argument is a run folder (``config.json`` + ``metrics.jsonl``) or a sweep folder (one
``fedjax-lab sweep`` wrote: its ``summary/`` and run folders ``<cell>/seed<s>``). The page
shows, in order: the config fields on which the entries differ (and what they share, folded);
the final-metrics table (for a sweep: its summary tables, with the paired differences); the
curves of the evaluated metrics (a sweep's cells: mean over seeds with the min-max band); and
the per-client accuracy at the last evaluation (``client_accuracy.npz``) as empirical
distribution functions: who gains and who loses, not only the mean.
"""

from __future__ import annotations

import argparse
import html
import io
import json
import pathlib

import numpy as np

from fedjax_lab import run_folder
from fedjax_lab.plots import pyplot
from fedjax_lab.tables import dotted_fields

CURVE_METRICS = ("global_accuracy", "client_accuracy_mean", "client_accuracy_p10", "train_loss")


def _entry(label: str, folders: list[pathlib.Path]) -> dict:
  """A line of the report: a run (one folder) or a sweep cell (its seeds' folders), with the
  config of its first folder and every folder's metric rows and per-client accuracies."""
  return {
    "label": label,
    "config": json.loads((folders[0] / run_folder.CONFIG_FILE).read_text()),
    "runs": [run_folder.read_metrics(folder) for folder in folders],
    "clients": [run_folder.read_client_accuracy(folder) for folder in folders],
  }


def collect(paths: list[pathlib.Path]) -> tuple[list[dict], list[str]]:
  """``(entries, sweep tables)``: a run folder is one entry; a sweep folder one entry per cell
  (its seeds together) and its ``summary/summary.md``. ``ValueError`` naming a path that is
  neither."""
  entries, tables = [], []
  for path in paths:
    if (path / run_folder.METRICS_FILE).exists():
      entries.append(_entry(path.name, [path]))
    elif (path / "summary").is_dir():
      cells: dict[str, list[pathlib.Path]] = {}
      for metrics in sorted(path.glob(f"*/seed*/{run_folder.METRICS_FILE}")):
        cells.setdefault(metrics.parent.parent.name, []).append(metrics.parent)
      entries += [_entry(cell, folders) for cell, folders in cells.items()]
      summary = path / "summary" / "summary.md"
      if summary.exists():
        tables.append(summary.read_text())
    else:
      raise ValueError(
        f"report: {path} is neither a run folder ({run_folder.METRICS_FILE}) nor a sweep "
        "folder (summary/)"
      )
  if not entries:
    raise ValueError("report: no runs found in " + ", ".join(map(str, paths)))
  return entries, tables


def config_split(entries: list[dict]) -> tuple[list[str], dict[str, object]]:
  """``(fields that differ between entries, {field: value} shared by all})``; ``out_dir`` and
  the seeds are left out (every run has its own)."""
  flats = [dotted_fields(entry["config"]) for entry in entries]
  fields = sorted(set().union(*flats) - {"out_dir", "seed", "data.seed"})
  differ = [f for f in fields if len({json.dumps(flat.get(f)) for flat in flats}) > 1]
  return differ, {f: flats[0].get(f) for f in fields if f not in differ}


def _svg(fig) -> str:
  buffer = io.StringIO()
  fig.savefig(buffer, format="svg")
  pyplot().close(fig)
  text = buffer.getvalue()
  return text[text.index("<svg") :]  # the XML prolog and doctype are not HTML


def curves_svg(entries: list[dict], metrics) -> str:
  """A panel per metric any run logged: per entry the mean over its runs, min-max band."""
  shown = [
    m for m in metrics if any(m in row for e in entries for rows in e["runs"] for row in rows)
  ]
  if not shown:
    return ""
  plt = pyplot()
  fig, axes = plt.subplots(1, len(shown), figsize=(4.3 * len(shown), 3.4), squeeze=False)
  for ax, metric in zip(axes[0], shown):
    for index, entry in enumerate(entries):
      series = [[(r["round"], r[metric]) for r in rows if metric in r] for rows in entry["runs"]]
      series = [s for s in series if s]
      if not series:
        continue
      length = min(len(s) for s in series)
      rounds = [r for r, _ in series[0][:length]]
      values = np.array([[v for _, v in s[:length]] for s in series])
      ax.plot(rounds, values.mean(0), color=f"C{index % 10}", label=entry["label"])
      if len(series) > 1:
        ax.fill_between(rounds, values.min(0), values.max(0), color=f"C{index % 10}", alpha=0.15)
    ax.set_title(metric, fontsize=9)
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  return _svg(fig)


def clients_svg(entries: list[dict]) -> str:
  """Per entry, the empirical distribution function of its clients' accuracies at the last
  evaluation (seeds pooled): the curve at x is the share of clients at or below accuracy x."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  drawn = False
  for index, entry in enumerate(entries):
    values = [c["client_accuracy"] for c in entry["clients"] if "client_accuracy" in c]
    if not values:
      continue
    accuracy = np.sort(np.concatenate(values))
    accuracy = accuracy[np.isfinite(accuracy)]
    share = np.arange(1, len(accuracy) + 1) / len(accuracy)
    ax.step(accuracy, share, where="post", color=f"C{index % 10}", label=entry["label"])
    drawn = True
  if not drawn:
    pyplot().close(fig)
    return ""
  ax.set_xlabel("client accuracy (own test split, last evaluation)")
  ax.set_ylabel("share of clients at or below")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return _svg(fig)


def final_rows(entries: list[dict]) -> list[dict]:
  """Per entry: its rounds, its runs (seeds) and the mean over its runs of each final
  accuracy (from the last row that has it)."""
  keys = {"global_acc": "global_accuracy", "client_acc_mean": "client_accuracy_mean",
          "client_acc_p10": "client_accuracy_p10"}  # fmt: skip
  rows = []
  for entry in entries:
    row = {"run": entry["label"]}
    row["rounds"] = max((rows[-1]["round"] for rows in entry["runs"] if rows), default=0)
    row["seeds"] = len(entry["runs"])
    for column, key in keys.items():
      last = [[r[key] for r in rows if key in r] for rows in entry["runs"]]
      last = [values[-1] for values in last if values]
      row[column] = f"{np.mean(last):.4f}" if last else "none"
    rows.append(row)
  return rows


def _table(rows: list[dict]) -> str:
  columns = list(dict.fromkeys(c for row in rows for c in row))
  head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
  body = "".join(
    "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
    for row in rows
  )
  return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
svg { max-width: 100%; height: auto; }
"""


def render(entries: list[dict], tables: list[str], title: str) -> str:
  """The report page (``collect``'s entries and sweep tables) as one HTML document."""
  differ, shared = config_split(entries)
  sections = [f"<h1>{html.escape(title)}</h1>", f"<p>{len(entries)} entries.</p>"]
  sections.append("<h2>Configuration</h2>")
  if differ:
    rows = [
      {"run": e["label"], **{f: dotted_fields(e["config"]).get(f) for f in differ}} for e in entries
    ]
    sections.append(_table(rows))
  else:
    sections.append("<p>The entries share every config field but their seeds.</p>")
  shared_rows = [{"field": f, "value": v} for f, v in shared.items()]
  sections.append(
    f"<details><summary>shared fields ({len(shared)})</summary>{_table(shared_rows)}</details>"
  )
  sections.append("<h2>Final metrics</h2>")
  sections.append(_table(final_rows(entries)))
  for text in tables:
    sections.append(f"<h3>Sweep summary</h3><pre>{html.escape(text)}</pre>")
  curves = curves_svg(entries, CURVE_METRICS)
  if curves:
    sections.append(f"<h2>Curves</h2><figure id='curves'>{curves}</figure>")
  clients = clients_svg(entries)
  if clients:
    sections.append(f"<h2>Per-client accuracy</h2><figure id='clients'>{clients}</figure>")
  body = "\n".join(sections)
  return (
    f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
    f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
  )


def main(argv: list[str]) -> int:
  """The ``report`` subcommand (``cli.main`` reports its ``ValueError``s in one line)."""
  parser = argparse.ArgumentParser(
    prog="fedjax-lab report",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("runs", nargs="+", help="run folders or sweep folders")
  parser.add_argument("--out", default="report.html", help="the HTML file to write")
  parser.add_argument("--title", default="fedjax-lab report")
  args = parser.parse_args(argv)
  entries, tables = collect([pathlib.Path(p).expanduser() for p in args.runs])
  out = pathlib.Path(args.out).expanduser()
  out.parent.mkdir(parents=True, exist_ok=True)
  run_folder.write_atomic(out, render(entries, tables, args.title))
  print(f"report of {len(entries)} entries in {out}")
  return 0
