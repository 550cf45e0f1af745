import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_lab.models import build_model

CASES = [("mlp", (2, 8, 8, 1)), ("fedavg_cnn", (2, 28, 28, 1)), ("femnist_cnn", (2, 28, 28, 1)), ("small_cnn", (2, 28, 28, 1)),
         ("cifar_cnn", (2, 32, 32, 3)), ("resnet20", (2, 32, 32, 3)), ("vgg", (2, 32, 32, 3)),
         ("char_lstm", (2, 12)), ("transformer_lm", (2, 12))]
GROUPS = {"fedavg_cnn": ("conv0", "conv1", "fc", "head"),
          "cifar_cnn": ("conv0", "conv1", "fc0", "fc1", "head"),
          "resnet20": ("stem", "stage0_block0", "stage0_block1", "stage1_block0",
                       "stage1_block1", "stage2_block0", "stage2_block1", "head"),
          "char_lstm": ("embed", "lstm0", "lstm1", "head")}


@pytest.mark.parametrize("name,shape", CASES)
def test_model_shapes_and_layer_groups(name, shape):
  model = build_model(name, 7)
  x = jnp.zeros(shape, jnp.int32 if len(shape) == 2 else jnp.float32)
  params = model.init(jax.random.key(0), x)
  logits = model.apply(params, x)
  assert logits.shape == shape[:1] + ((shape[1],) if len(shape) == 2 else ()) + (7,)
  groups = model.layer_groups(params)
  assert set(groups) == set(params) and groups[-1] == "head"
  if name in GROUPS:
    assert groups == GROUPS[name]


def test_published_parameter_counts():
  # FedMR's CNNCifar (LeNet-5 for 10 classes) has 62,006 parameters.
  params = build_model("cifar_cnn", 10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert sum(x.size for x in jax.tree.leaves(params)) == 62_006
  # McMahan et al.'s CNN for 28x28 with 10 classes: 1,663,370 parameters.
  params = build_model("fedavg_cnn", 10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  assert sum(x.size for x in jax.tree.leaves(params)) == 1_663_370


def test_unknown_model_is_a_clear_error():
  with pytest.raises(ValueError, match="model.name='nope' is unknown; allowed: mlp"):
    build_model("nope", 10)


@pytest.mark.parametrize("name,shape", [("fedavg_cnn", (28, 28, 1)), ("femnist_cnn", (28, 28, 1)),
                                        ("resnet20", (32, 32, 3))])   # SAME, VALID, strided
def test_im2col_convolutions_equal_xla_convolutions(name, shape):
  x = jax.random.normal(jax.random.key(1), (2, *shape))
  xla, im2col = build_model(name, 10), build_model(name, 10, conv="im2col")
  params = xla.init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes(params, im2col.init(jax.random.key(0), x))
  np.testing.assert_allclose(im2col.apply(params, x), xla.apply(params, x), atol=1e-4, rtol=1e-4)
  per_client = jax.tree.map(lambda leaf: jnp.stack([leaf, 2 * leaf]), params)
  clients_x = jnp.stack([x, x[::-1]])
  np.testing.assert_allclose(jax.vmap(im2col.apply)(per_client, clients_x),
                             jax.vmap(xla.apply)(per_client, clients_x), atol=1e-3, rtol=1e-3)
