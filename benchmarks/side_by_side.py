"""This project against the peers (a plain PyTorch loop, FedJAX, raw JAX) on the same FedAvg
workloads, in one sitting, interleaved (project, torch, FedJAX, ... then again), as ratios.

  python benchmarks/side_by_side.py --peers /path/to/copy/of/shared/peers --repeats 2
  python benchmarks/side_by_side.py --peers ... --models cnn     # the CNN cells and FedMR's only

Cells: the peers' uniform workload (200 synthetic examples per client, 10 local steps of batch
20: the FEMNIST CNN at 10 and 100 clients a round, the 784-200-200-10 MLP at 10 and 100) run by
``benchmarks/bench.py`` with the project's ``auto`` choice for this backend, and the FedMR
official setting (``benchmarks/official_fedmr.py``: skewed federation, full client data, 5
epochs) against the same rounds in plain PyTorch. The peers' venvs are set up as their README
says (``.venv-peers`` with torch, ``.venv-fedjax`` with FedJAX); a missing one is skipped.
Appends every measurement to ``--out`` (JSON lines) and prints one table per repeat.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (peer model, clients a round) -> this project's bench.py arguments (what `auto` picks on CPU).
UNIFORM = {
  ("cnn", 10): ["--models", "fedavg_cnn", "--strategies", "loop", "--convs", "im2col"],
  ("cnn", 100): ["--models", "fedavg_cnn", "--strategies", "loop", "--convs", "im2col"],
  ("mlp", 10): ["--models", "mlp", "--strategies", "vmap"],
  ("mlp", 100): ["--models", "mlp", "--strategies", "loop/4"],
}


def _json_line(command: list[str], cwd: pathlib.Path) -> dict:
  done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1800)
  if done.returncode != 0:
    return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
  return json.loads(done.stdout.strip().splitlines()[-1])


def project_uniform(model: str, clients: int, rounds: int) -> float:
  with tempfile.TemporaryDirectory() as out:
    command = [sys.executable, "benchmarks/bench.py", *UNIFORM[(model, clients)],
               "--cohorts", str(clients), "--rounds", str(rounds), "--out", out]  # fmt: skip
    subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=1800)
    rows = json.loads((pathlib.Path(out) / "results.json").read_text())["rows"]
  return rows[0]["seconds_per_round"]


def peer_uniform(peers: pathlib.Path, peer: str, model: str, clients: int, rounds: int):
  venv, script = {
    "torch": (".venv-peers", "torch_fedavg.py"),
    "fedjax": (".venv-fedjax", "fedjax_fedavg.py"),
    "raw_jax": (None, "jax_reference.py"),
  }[peer]
  python = str(peers / venv / "bin" / "python") if venv else sys.executable
  if venv and not (peers / venv).exists():
    return None
  command = [python, script, "--model", model, "--clients-per-round", str(clients),
             "--local-steps", "10", "--batch-size", "20", "--threads", "2"]  # fmt: skip
  if peer == "raw_jax":  # a reference, not a peer: one vmapped round, its own flags
    return _json_line(command, peers).get("vmap_round_s")
  command += ["--rounds", str(rounds), "--warmup-rounds", "1"]
  return _json_line(command, peers).get("sec_per_round")


def official(framework: str, rounds: int) -> dict:
  return _json_line([sys.executable, "benchmarks/official_fedmr.py", "--framework", framework,
                     "--rounds", str(rounds)], ROOT)  # fmt: skip


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--peers", required=True, help="a copy of shared/peers with its venvs")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--official-rounds", type=int, default=8, help="0: skip that cell")
  parser.add_argument("--models", nargs="+", choices=["cnn", "mlp"], default=["cnn", "mlp"])
  parser.add_argument("--out", default="benchmarks/results/side_by_side.jsonl")
  args = parser.parse_args()
  peers = pathlib.Path(args.peers).resolve()
  out = ROOT / args.out
  out.parent.mkdir(parents=True, exist_ok=True)
  for repeat in range(1, args.repeats + 1):
    rows = []
    for model, clients in (cell for cell in UNIFORM if cell[0] in args.models):
      rounds = 2 if (model, clients) == ("cnn", 100) else args.rounds
      row = {"repeat": repeat, "cell": f"{model} C={clients} (uniform)",
             "fedjax_lab": project_uniform(model, clients, rounds)}  # fmt: skip
      for peer in ("torch", "fedjax") + (("raw_jax",) if model == "mlp" else ()):
        row[peer] = peer_uniform(peers, peer, model, clients, rounds)
      rows.append(row)
    if args.official_rounds:
      ours, torch = official("jax", args.official_rounds), official("torch", args.official_rounds)
      rows.append({"repeat": repeat, "cell": "FedMR official setting (skewed, 5 epochs)",
                   "fedjax_lab": ours.get("sec_per_round_mean"),
                   "torch": torch.get("sec_per_round_mean"),
                   "fedjax_lab_peak_rss_mib": ours.get("peak_rss_mib"),
                   "fedjax_lab_first_round_s": ours.get("first_round_sec"),
                   "computed_step_ratio": ours.get("computed_step_ratio")})  # fmt: skip
    with open(out, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    print(f"\nrepeat {repeat}: seconds per round, and the peer's time over this project's")
    print("| cell | fedjax_lab | torch loop | FedJAX | raw JAX |")
    print("|---|---|---|---|---|")
    for row in rows:
      cells = [f"{row['fedjax_lab']:.3f}"]
      for peer in ("torch", "fedjax", "raw_jax"):
        value = row.get(peer)
        cells.append(f"{value:.3f} ({value / row['fedjax_lab']:.2f}x)" if value else "-")
      print(f"| {row['cell']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
