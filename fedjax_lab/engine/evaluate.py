"""Evaluation: the global model on the pooled test set, and the model each client would use on
its own test split (personalized evaluation)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_lab.ops.losses import inert_padding, per_example_correct, per_example_cross_entropy


def _masked_sums(apply_fn, params, x, y, mask):
  """(correct, loss, count) summed over the real examples of one padded batch (padding rows
  selected away: ``ops.losses.inert_padding``)."""
  x, y = inert_padding(x, mask), inert_padding(y, mask)
  logits = apply_fn(params, x)
  real = lambda values: jnp.where(mask, values, 0.0).sum()
  return jnp.stack(
    [
      real(per_example_correct(logits, y)),
      real(per_example_cross_entropy(logits, y)),
      mask.astype(jnp.float32).sum(),
    ]
  )


_jitted_sums = jax.jit(_masked_sums, static_argnums=0)


def evaluate_pooled(
  apply_fn, params, x: np.ndarray, y: np.ndarray, batch_size: int = 500
) -> dict[str, float]:
  """Accuracy and mean loss of one model on ``x, y``, in fixed-shape batches (one compilation)."""
  num_real = len(y)
  batch_size = min(batch_size, num_real)
  padded = -(-num_real // batch_size) * batch_size
  pad = lambda a: np.concatenate([a, np.zeros((padded - num_real,) + a.shape[1:], a.dtype)])
  x, y, mask = pad(x), pad(y), np.arange(padded) < num_real
  totals = sum(
    np.asarray(
      _jitted_sums(
        apply_fn, params, x[s : s + batch_size], y[s : s + batch_size], mask[s : s + batch_size]
      )
    )
    for s in range(0, padded, batch_size)
  )
  return {"accuracy": float(totals[0] / totals[2]), "loss": float(totals[1] / totals[2])}


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def _per_client_sums(apply_fn, params, x, y, num_examples, personal: bool, chunk_size: int):
  def one_client(args):
    client_params, cx, cy, n = args if personal else (params,) + args
    return _masked_sums(apply_fn, client_params, cx, cy, jnp.arange(cx.shape[0]) < n)

  args = (params, x, y, num_examples) if personal else (x, y, num_examples)
  return jax.lax.map(one_client, args, batch_size=chunk_size)


def client_test_sums(
  apply_fn,
  params,
  x: np.ndarray,
  y: np.ndarray,
  num_examples: np.ndarray,
  *,
  personal: bool,
  chunk_size: int = 16,
) -> np.ndarray:
  """``[num_clients, 3]``: each client's (correct, summed loss, example count) on its padded
  split. ``personal``: ``params`` has a leading client axis (each client's own model);
  otherwise one model is shared by every client."""
  return np.asarray(_per_client_sums(apply_fn, params, x, y, num_examples, personal, chunk_size))


def client_metrics(
  sums: np.ndarray, sequences: bool, client_paths=None, population: int | None = None
) -> dict[str, float]:
  """From ``client_test_sums``: per-client accuracy summarized (``summarize_clients``) and the
  loss over all clients' test examples pooled, ``client_loss``. ``population``: the clients
  were a uniform sample of that many, so ``client_accuracy_sem`` gives the standard error of
  their mean accuracy, ``s / sqrt(n) * sqrt(1 - n / N)`` (sample std ``s``, ddof=1, over the
  ``n`` clients with a test split; finite-population correction). For next-token data also
  ``client_perplexity = exp(client_loss)`` (per token: every example has the same length) and,
  given the clients' paths, ``client_perplexity/<federation>`` over the clients whose path
  starts with that federation."""
  accuracy = client_accuracies(sums)
  loss = float(sums[:, 1].sum() / max(sums[:, 2].sum(), 1))
  metrics = {**summarize_clients(accuracy), "client_loss": loss}
  if population is not None:
    real = accuracy[~np.isnan(accuracy)]
    spread = real.std(ddof=1) if len(real) > 1 else float("nan")
    metrics["client_accuracy_sem"] = float(
      spread / np.sqrt(len(real)) * np.sqrt(1 - len(real) / population)
    )
  if sequences:
    metrics["client_perplexity"] = float(np.exp(loss))
    federations = [path.split("/")[0] for path in client_paths or ()]
    for name in sorted(set(federations)):
      part = sums[np.array(federations) == name]
      metrics[f"client_perplexity/{name}"] = float(
        np.exp(part[:, 1].sum() / max(part[:, 2].sum(), 1))
      )
  return metrics


def client_accuracies(sums: np.ndarray) -> np.ndarray:
  """``[clients]``: each client's test accuracy from ``client_test_sums`` (correct / examples;
  NaN for a client without test examples)."""
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(sums[:, 2] > 0, sums[:, 0] / sums[:, 2], np.nan)


def summarize_clients(accuracy: np.ndarray) -> dict[str, float]:
  """Mean, standard deviation and 10th percentile across clients (NaNs ignored)."""
  real = accuracy[~np.isnan(accuracy)]
  return {
    "client_accuracy_mean": float(real.mean()),
    "client_accuracy_std": float(real.std()),
    "client_accuracy_p10": float(np.percentile(real, 10)),
  }
