"""How the local step loop is written, measured: rolled ``lax.scan``, partly and fully unrolled
scans, a ``while`` loop to a dynamic step count, and a discarded padded step as ``lax.cond``
against a select; for each way of computing convolutions (``model.conv``).

  python benchmarks/local_steps.py [--model femnist_cnn] [--steps 40] [--batch 50] \
      [--convs xla explicit_vjp]

One client, SGD with momentum, batches sliced from a synthetic 981-example client. Prints
milliseconds per step (after compiling) and the compile time of each variant.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_lab.models import build_model


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--model", default="femnist_cnn")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--batch", type=int, default=50)
  parser.add_argument("--convs", nargs="+", default=["xla", "explicit_vjp"])
  parser.add_argument("--short", action="store_true", help="rolled scan, full unroll, while only")
  args = parser.parse_args()
  print(f"{args.model}, batch {args.batch}, {args.steps} steps, {jax.default_backend()}")
  for conv in args.convs:
    measure(args, conv)


def measure(args, conv: str) -> None:
  model = build_model(args.model, 10, conv)
  params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  x = jnp.asarray(np.random.default_rng(0).random((981, 28, 28, 1), np.float32))
  y = jnp.zeros(981, jnp.int32)
  optimizer = optax.sgd(0.01, momentum=0.5)

  def loss(p, bx, by):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, bx), by).mean()

  def update(carry, i):
    p, s = carry
    start = (i * args.batch) % (981 - args.batch)
    bx = jax.lax.dynamic_slice_in_dim(x, start, args.batch)
    by = jax.lax.dynamic_slice_in_dim(y, start, args.batch)
    updates, s = optimizer.update(jax.grad(loss)(p, bx, by), s, p)
    return optax.apply_updates(p, updates), s

  def scan(unroll, padded):
    def step(carry, i):
      if padded == "cond":
        return jax.lax.cond(i < args.steps, lambda c: update(c, i), lambda c: c, carry), None
      if padded == "select":
        new = update(carry, i)
        return jax.tree.map(lambda a, b: jnp.where(i < args.steps, a, b), new, carry), None
      return update(carry, i), None

    return jax.jit(
      lambda p: jax.lax.scan(step, (p, optimizer.init(p)), jnp.arange(args.steps), unroll=unroll)[
        0
      ][0]
    )

  def while_loop(p):
    count = jnp.asarray(args.steps) + 0 * p["head"]["bias"][0].astype(jnp.int32)  # traced
    body = lambda i, carry: update(carry, i)
    return jax.lax.fori_loop(0, count, body, (p, optimizer.init(p)))[0]

  variants = {f"scan unroll={k}": scan(k, None) for k in ((1,) if args.short else (1, 5, 10))}
  variants["full unroll"] = scan(True, None)
  variants["while to a traced step count"] = jax.jit(while_loop)
  if not args.short:
    variants["full unroll, cond per step"] = scan(True, "cond")
    variants["full unroll, select per step"] = scan(True, "select")
  for name, fn in variants.items():
    name = f"{conv}: {name}"
    start = time.perf_counter()
    jax.block_until_ready(fn(params))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(fn(params))
    per_step = (time.perf_counter() - start) / args.steps * 1000
    print(f"{name:46s} {per_step:7.1f} ms/step   compile+first run {compile_s:5.1f} s")


if __name__ == "__main__":
  main()
