"""Local training of one client as one pure function.

Batching contract (shared with the reference loop in the tests). A client with ``n`` real
examples and batch size ``B`` has ``b(n) = ceil(n / B)`` batches per epoch; its step ``s`` uses
epoch ``e = s // b(n)`` and batch ``j = s % b(n)``. Epoch ``e``'s order is a permutation of the
``n`` real examples drawn from ``fold_in(key, e)``; batch ``j`` holds positions
``j*B .. j*B+B-1`` of it, the last batch of an epoch keeping only the real ones (as a PyTorch
DataLoader with ``drop_last=False``). The client runs ``E * b(n)`` steps (``epochs`` mode) or
``S`` steps (``steps`` mode), in a rolled loop whose trip count is that number: no step is
computed for padding (``make_local_trainer``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_lab.ops.losses import inert_padding, masked_mean, per_example_cross_entropy

# objective(params, batch_x, batch_y, batch_mask, context) -> scalar loss; a stochastic one
# (make_local_trainer(stochastic=True)) takes a sixth argument, the step's own key.
Objective = Callable[..., jax.Array]
STEP_KEY_STREAM = 0x5EED  # fold_in(key, STEP_KEY_STREAM): the root of the per-step keys


@dataclasses.dataclass(frozen=True)
class LocalSchedule:
  """How many steps a client takes. Exactly one of ``epochs`` and ``steps`` is positive.
  ``min_examples``: the smallest non-empty client of the federation (it bounds how many epochs
  a client may start in ``steps`` mode, so only those epochs' orders are drawn)."""

  batch_size: int
  max_examples: int
  epochs: int = 1
  steps: int = 0
  min_examples: int = 1

  def batches_per_epoch(self, num_examples):
    return jnp.maximum((num_examples + self.batch_size - 1) // self.batch_size, 1)

  def client_steps(self, num_examples) -> jax.Array:
    """Steps a client with ``num_examples`` real examples takes (0 for an empty client)."""
    per_client = (
      self.steps if self.steps > 0 else self.epochs * self.batches_per_epoch(num_examples)
    )
    return jnp.where(num_examples > 0, per_client, 0)

  @property
  def max_epochs(self) -> int:
    """Epochs any client may start: ``epochs``, or in ``steps`` mode ``ceil(S / b(n_min))``
    (a one-batch client starts one per step; 200-example clients of batch 20 only one in 10
    steps)."""
    if self.steps <= 0:
      return self.epochs
    fewest_batches = -(-max(self.min_examples, 1) // self.batch_size)
    return -(-self.steps // fewest_batches)

  @property
  def max_steps(self) -> int:
    """The static length of the step loop: the most steps any client of the federation takes."""
    if self.steps > 0:
      return self.steps
    return self.epochs * -(-self.max_examples // self.batch_size)


def epoch_orders(key: jax.Array, num_examples, schedule: LocalSchedule) -> jax.Array:
  """``[max_epochs, max_examples]``: row ``e`` lists the real examples first, in the order
  given by ``uniform(fold_in(key, e))``, then the padding positions."""
  positions = jnp.arange(schedule.max_examples)

  def order(epoch):
    scores = jax.random.uniform(jax.random.fold_in(key, epoch), (schedule.max_examples,))
    return jnp.argsort(jnp.where(positions < num_examples, scores, 2.0))

  return jax.vmap(order)(jnp.arange(schedule.max_epochs))


def batch_indices(orders: jax.Array, num_examples, step, schedule: LocalSchedule):
  """Indices ``[B]`` into the client's padded arrays for ``step``, and their mask ``[B]``."""
  per_epoch = schedule.batches_per_epoch(num_examples)
  epoch, batch = step // per_epoch, step % per_epoch
  slots = batch * schedule.batch_size + jnp.arange(schedule.batch_size)
  indices = orders[
    jnp.minimum(epoch, orders.shape[0] - 1), jnp.minimum(slots, schedule.max_examples - 1)
  ]
  return indices, slots < num_examples


def cross_entropy_objective(apply_fn) -> Objective:
  """Mean softmax cross-entropy over the real examples of the batch; ``context`` unused."""

  def objective(params, x, y, mask, context):
    del context
    return masked_mean(per_example_cross_entropy(apply_fn(params, x), y), mask)

  return objective


@dataclasses.dataclass(frozen=True)
class LocalResult:
  """Per-client diagnostics of local training."""

  mean_loss: jax.Array  # mean objective over the steps taken (before each update)
  num_steps: jax.Array  # steps taken


jax.tree_util.register_dataclass(
  LocalResult, data_fields=["mean_loss", "num_steps"], meta_fields=[]
)


def make_local_trainer(
  objective: Objective,
  optimizer: optax.GradientTransformation,
  schedule: LocalSchedule,
  unroll: bool = False,
  stochastic: bool = False,
):
  """``train(params, x, y, num_examples, key, context, step_limit) -> (params, LocalResult)``.

  ``step_limit`` (optional, an int): the most steps the client takes this round, its first
  ones (partial work: a straggler stopped at the deadline); None: all of them.

  ``stochastic``: ``objective`` also takes a key of its own at every step (dropout), step
  ``s``'s being ``fold_in(fold_in(key, STEP_KEY_STREAM), s)``: the same client key gives the
  same keys, whatever the execution strategy.

  ``x``, ``y``: one client's padded arrays ``[max_examples, ...]``. The optimizer state starts
  fresh. The step loop is rolled and runs to the client's own step count (a ``while`` loop
  with a traced trip count): alone (the ``loop`` strategy) a client computes exactly its steps;
  under ``vmap`` the batch runs to its largest member's count, the others' carries held by a
  select. ``unroll`` instead unrolls a static loop of ``schedule.max_steps`` steps, steps past
  the client's count computed and discarded by a select (the project's earlier default for
  convolutions on XLA:CPU: fast steps, compile time growing with the step count).
  """
  grad_fn = jax.value_and_grad(objective)

  def train(params, x, y, num_examples, key, context=None, step_limit=None):
    total_steps = schedule.client_steps(num_examples)
    if step_limit is not None:
      total_steps = jnp.minimum(total_steps, step_limit)
    orders = epoch_orders(key, num_examples, schedule)
    step_keys = jax.random.fold_in(key, STEP_KEY_STREAM)

    def update(step_index, carry):
      params, opt_state, loss_sum = carry
      indices, mask = batch_indices(orders, num_examples, step_index, schedule)
      step_key = (jax.random.fold_in(step_keys, step_index),) if stochastic else ()
      batch_x, batch_y = inert_padding(x[indices], mask), inert_padding(y[indices], mask)
      loss, grads = grad_fn(params, batch_x, batch_y, mask, context, *step_key)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss_sum + loss

    def masked_step(carry, step_index):
      active = step_index < total_steps
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(active, a, b), new, old)
      return keep(update(step_index, carry), carry), None

    carry = (params, optimizer.init(params), jnp.zeros((), jnp.float32))
    if unroll:
      carry, _ = jax.lax.scan(masked_step, carry, jnp.arange(schedule.max_steps), unroll=True)
    else:
      carry = jax.lax.fori_loop(0, total_steps, update, carry)
    params, _, loss_sum = carry
    result = LocalResult(loss_sum / jnp.maximum(total_steps, 1), total_steps)
    return params, result

  return train
