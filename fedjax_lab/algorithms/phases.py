"""A round as phases: server steps and client phases over one explicit carry.

A round is a sequence of phases, each ``run(carry) -> carry`` over a dict that starts as
``{"state": state, "cohort": cohort, "key": key}`` and ends holding ``"state"`` (the new state)
and ``"metrics"``. A phase runs on one side:

- ``server(run)``: array code of the server (aggregation, server optimizer, recombination,
  clustering, influence scoring, distillation). Pure: compiled once per input shape under
  every strategy.
- ``clients(run)``: a map over the cohort through the setup's executor (``cohort_trainer``,
  ``executor.map``) and the light glue around it. Under ``loop`` it runs on the host, which
  drives one compiled call per client, as before.

``Phases(...)`` is itself a round (``phases(state, cohort, key) -> (state, metrics)``), so it is
an ``Algorithm.round``. The engine composes it (``Phases.compiled``): under ``vmap`` and
``chunked`` the runner jits the whole round into one program, exactly the phases in order;
under ``loop`` each server phase is its own jitted program, so ``lax`` control flow over
functions made inside a round compiles once, not once a round (the leak FedMR, FedGen, CFL and
pFedLIA had when their whole round ran op by op).

Why this form (docs/architecture.md, "The round as phases"): an explicit carry keeps what one
step hands the next visible without a state class per method, several client phases per round
are as easy as one (Ditto, FedALA, FedSND), and a method written in a notebook cell is a list
of plain functions. FedJAX's ``client_update`` / ``server_update`` split fixes one client pass
per round; pfl's per-user callbacks run clients one at a time on the host, which would undo
the vmapped engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

Carry = dict
SIDES = ("server", "clients")


@dataclasses.dataclass(frozen=True)
class Phase:
  """One step of a round: ``run(carry) -> carry`` on ``side`` (``server`` or ``clients``)."""

  side: str
  run: Callable[[Carry], Carry]

  def __post_init__(self):
    if self.side not in SIDES:
      raise ValueError(f"a phase runs on one of {SIDES}, got {self.side!r}")


def server(run: Callable[[Carry], Carry]) -> Phase:
  """A server phase: pure array code, compiled once under every strategy."""
  return Phase("server", run)


def clients(run: Callable[[Carry], Carry]) -> Phase:
  """A client phase: the cohort mapped through the executor (host-driven under ``loop``)."""
  return Phase("clients", run)


class Phases:
  """A round made of ``phases`` (module docstring); calling it runs them in order, eagerly.
  Jitted whole, its program is named ``jit_round_fn`` (profiles and HLO dumps show that)."""

  def __init__(self, *phases: Phase):
    if not phases or not all(isinstance(p, Phase) for p in phases):
      raise ValueError("a round is one or more phases (phases.server(...), phases.clients(...))")
    self.phases = phases
    self.__name__ = self.__qualname__ = "round_fn"  # what jax.jit names the program after

  def __call__(self, state, cohort, key, **inputs):
    """``(state, metrics)``; ``inputs``: arrays a host-side plan adds to the first carry
    (adaptive pruning's pruning ratios)."""
    return _run([p.run for p in self.phases], state, cohort, key, inputs)

  def compiled(self) -> Callable:
    """The round with each server phase jitted (once per input shape) and each client phase
    as it is: what ``loop`` runs, where the round cannot be one program."""
    runs = [jax.jit(p.run) if p.side == "server" else p.run for p in self.phases]
    return lambda state, cohort, key, **inputs: _run(runs, state, cohort, key, inputs)

  @property
  def client_phases(self) -> int:
    """How many times a round maps over its cohort."""
    return sum(p.side == "clients" for p in self.phases)


def _run(runs, state, cohort, key, inputs):
  carry = {"state": state, "cohort": cohort, "key": key, **inputs}
  for run in runs:
    carry = run(carry)
  missing = [name for name in ("state", "metrics") if name not in carry]
  if missing:
    raise ValueError(f"a round's last phase must leave 'state' and 'metrics'; missing {missing}")
  return carry["state"], carry["metrics"]


def for_executor(round_fn: Callable, jit_round: bool) -> Callable:
  """``round_fn`` as an executor runs it: one jitted program when the executor allows
  (``jit_round``), else ``Phases.compiled`` for phases and the function as it is otherwise. For
  a method that picks among rounds on the host (``Algorithm.host_phases``), per choice."""
  if jit_round:
    return jax.jit(round_fn)
  return round_fn.compiled() if isinstance(round_fn, Phases) else round_fn
