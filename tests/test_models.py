import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from fedjax_lab.models import build_model
from fedjax_lab.models.im2col import NHWC, apply_convolutions, conv_with_explicit_vjp
from fedjax_lab.models.pooling import max_pool_2x2

CASES = [
  ("mlp", (2, 8, 8, 1)),
  ("fedavg_cnn", (2, 28, 28, 1)),
  ("emnist_cnn", (2, 28, 28, 1)),
  ("femnist_cnn", (2, 28, 28, 1)),
  ("small_cnn", (2, 28, 28, 1)),
  ("cifar_cnn", (2, 32, 32, 3)),
  ("resnet20", (2, 32, 32, 3)),
  ("resnet18_gn", (2, 24, 24, 3)),
  ("vgg", (2, 32, 32, 3)),
  ("char_lstm", (2, 12)),
  ("word_lstm", (2, 12)),
  ("transformer_lm", (2, 12)),
  ("bag_of_words", (2, 12)),
]
GROUPS = {
  "fedavg_cnn": ("conv0", "conv1", "fc", "head"),
  "cifar_cnn": ("conv0", "conv1", "fc0", "fc1", "head"),
  "resnet20": (
    "stem",
    "stage0_block0",
    "stage0_block1",
    "stage1_block0",
    "stage1_block1",
    "stage2_block0",
    "stage2_block1",
    "head",
  ),
  "char_lstm": ("embed", "lstm0", "lstm1", "head"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", CASES)
def test_model_shapes_and_layer_groups(name, shape):
  model = build_model(name, 7)
  x = jnp.zeros(shape, jnp.int32 if len(shape) == 2 else jnp.float32)
  params = model.init(jax.random.key(0), x)
  logits = model.apply(params, x)
  per_token = len(shape) == 2 and name != "bag_of_words"  # one label a sequence, not a token
  assert logits.shape == shape[:1] + ((shape[1],) if per_token else ()) + (7,)
  groups = model.layer_groups(x)
  assert set(groups) == set(params) and groups[-1] == "head"
  if name in GROUPS:
    assert groups == GROUPS[name]


@pytest.mark.slow
def test_published_parameter_counts():
  # FedMR's CNNCifar (LeNet-5 for 10 classes) has 62,006 parameters.
  params = build_model("cifar_cnn", 10).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert sum(x.size for x in jax.tree.leaves(params)) == 62_006
  # McMahan et al.'s CNN for 28x28 with 10 classes: 1,663,370 parameters.
  params = build_model("fedavg_cnn", 10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  assert sum(x.size for x in jax.tree.leaves(params)) == 1_663_370
  # The adaptive-optimization benchmark's models (Reddi et al. 2021, TFF's builders): the
  # EMNIST CNN (62 classes, its dropout left out, which has no parameters), ResNet-18 with
  # GroupNorm on 24x24 CIFAR-100 crops, the StackOverflow LSTM over 10,004 ids.
  for name, classes, shape, count in [
    ("emnist_cnn", 62, (1, 28, 28, 1), 1_206_590),
    ("resnet18_gn", 100, (1, 24, 24, 3), 11_227_812),
    ("word_lstm", 10004, (1, 20), 4_050_748),
  ]:
    x = jnp.zeros(shape, jnp.int32 if len(shape) == 2 else jnp.float32)
    params = build_model(name, classes).init(jax.random.key(0), x)
    assert sum(x.size for x in jax.tree.leaves(params)) == count, name


def test_unknown_model_is_a_clear_error():
  with pytest.raises(ValueError, match="model.name must be one of mlp, .*, got 'nope'"):
    build_model("nope", 10)


@pytest.mark.slow
@pytest.mark.parametrize(
  "name,shape",
  [("fedavg_cnn", (28, 28, 1)), ("femnist_cnn", (28, 28, 1)), ("resnet20", (32, 32, 3))],
)  # SAME, VALID, strided
def test_im2col_convolutions_equal_xla_convolutions(name, shape):
  x = jax.random.normal(jax.random.key(1), (2, *shape))
  xla, im2col = build_model(name, 10), build_model(name, 10, conv="im2col")
  params = xla.init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes(params, im2col.init(jax.random.key(0), x))
  apply = lambda model: jax.jit(model.apply)
  np.testing.assert_allclose(apply(im2col)(params, x), apply(xla)(params, x), atol=1e-4, rtol=1e-4)
  per_client = jax.tree.map(lambda leaf: jnp.stack([leaf, 2 * leaf]), params)
  clients_x = jnp.stack([x, x[::-1]])
  np.testing.assert_allclose(
    jax.jit(jax.vmap(im2col.apply))(per_client, clients_x),
    jax.jit(jax.vmap(xla.apply))(per_client, clients_x),
    atol=1e-3,
    rtol=1e-3,
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  "x_shape,k_shape,strides,pads",
  [
    ((3, 28, 28, 1), (5, 5, 1, 16), (1, 1), ((2, 2), (2, 2))),  # SAME
    ((3, 12, 12, 16), (5, 5, 16, 32), (1, 1), ((0, 0), (0, 0))),  # VALID (FEMNIST conv2)
    ((2, 9, 8, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1))),  # strided, odd sizes
    ((2, 7, 7, 2), (3, 2, 2, 5), (2, 3), ((1, 0), (0, 2))),  # uneven strides and padding
  ],
)
def test_explicit_vjp_convolution_matches_lax_conv_gradients(x_shape, k_shape, strides, pads):
  keys = jax.random.split(jax.random.key(3), 3)
  x, kernel = jax.random.normal(keys[0], x_shape), jax.random.normal(keys[1], k_shape)
  reference = lambda x, k: lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=NHWC)
  explicit = lambda x, k: conv_with_explicit_vjp(x, k, strides, pads)
  out = reference(x, kernel)
  cotangent = jax.random.normal(keys[2], out.shape)
  np.testing.assert_allclose(explicit(x, kernel), out, atol=1e-5, rtol=1e-5)
  loss = lambda fn: lambda x, k: jnp.vdot(fn(x, k), cotangent)
  want = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
  got = jax.grad(loss(explicit), argnums=(0, 1))(x, kernel)
  chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)
  # Per-client kernels and inputs under vmap (and inside jit) give the same gradients.
  batched = lambda fn: jax.jit(jax.vmap(jax.grad(loss(fn), argnums=(0, 1))))
  stacked_x, stacked_k = jnp.stack([x, 2 * x]), jnp.stack([kernel, -kernel])
  chex.assert_trees_all_close(
    batched(explicit)(stacked_x, stacked_k),
    batched(reference)(stacked_x, stacked_k),
    atol=1e-3,
    rtol=1e-4,
  )


@pytest.mark.slow
@pytest.mark.parametrize("conv", ["explicit_vjp", "im2col"])
@pytest.mark.parametrize("name,shape", [("femnist_cnn", (28, 28, 1)), ("cifar_cnn", (32, 32, 3))])
def test_custom_gradient_models_train_like_xla_models(name, shape, conv):
  """Same parameters, same logits and the same loss gradient for every parameter."""
  x = jax.random.normal(jax.random.key(1), (4, *shape))
  y = jnp.arange(4) % 10
  xla, custom = build_model(name, 10), build_model(name, 10, conv=conv)
  params = xla.init(jax.random.key(0), x)

  def loss(model):
    return lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

  np.testing.assert_allclose(custom.apply(params, x), xla.apply(params, x), atol=1e-4)
  gradient = lambda model: jax.jit(jax.grad(loss(model)))(params)
  chex.assert_trees_all_close(gradient(custom), gradient(xla), atol=1e-4, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(
  "x_shape,kernel,strides,padding",
  [
    ((3, 14, 14, 32), (5, 5), 1, "SAME"),  # the FEMNIST CNN's second conv
    ((2, 9, 8, 3), (3, 3), 2, "SAME"),  # strided, odd sizes
    ((2, 13, 12, 2), (9, 3), (2, 3), [(1, 0), (0, 2)]),  # more than 8 rows; uneven
  ],
)
def test_im2col_convolution_gradients_equal_lax_conv_gradients(x_shape, kernel, strides, padding):
  """Values and input / kernel gradients, alone and under vmap over per-client kernels."""
  conv = nn.Conv(4, kernel, strides=strides, padding=padding)
  keys = jax.random.split(jax.random.key(5), 3)
  x = jax.random.normal(keys[0], x_shape)
  params = conv.init(keys[1], x)
  out = conv.apply(params, x)
  cotangent = jax.random.normal(keys[2], out.shape)
  im2col = lambda p, x: apply_convolutions(conv, p, x, "im2col")
  loss = lambda fn: lambda p, x: jnp.vdot(fn(p, x), cotangent)
  np.testing.assert_allclose(im2col(params, x), out, atol=1e-5, rtol=1e-5)
  want = jax.grad(loss(conv.apply), argnums=(0, 1))(params, x)
  chex.assert_trees_all_close(
    jax.grad(loss(im2col), argnums=(0, 1))(params, x), want, atol=1e-4, rtol=1e-4
  )
  batched = lambda fn: jax.jit(jax.vmap(jax.grad(loss(fn), argnums=(0, 1))))
  stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, -2 * leaf]), params), jnp.stack([x, x])
  chex.assert_trees_all_close(
    batched(im2col)(*stacked), batched(conv.apply)(*stacked), atol=1e-3, rtol=1e-4
  )


@pytest.mark.parametrize("shape", [(3, 24, 24, 16), (2, 9, 7, 3)])  # even; odd sizes cropped
def test_mask_max_pool_equals_flax_max_pool_after_relu(shape):
  """Values always; gradients after a ReLU, where tied window maxima are zeros (as in every model
  here), including windows that are all zero."""
  keys = jax.random.split(jax.random.key(5), 2)
  x = jax.nn.relu(jax.random.normal(keys[0], shape) - 0.5)  # about 70% zeros: many ties
  reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
  cotangent = jax.random.normal(keys[1], reference(x).shape)
  loss = lambda pool: lambda z: jnp.vdot(pool(jax.nn.relu(z)), cotangent)
  z = jax.random.normal(keys[0], shape) - 0.5
  np.testing.assert_array_equal(jax.grad(loss(max_pool_2x2))(z), jax.grad(loss(reference))(z))
  batched = jax.vmap(jax.grad(loss(max_pool_2x2)))(jnp.stack([z, -z]))
  np.testing.assert_array_equal(batched[1], jax.grad(loss(reference))(-z))


def test_mask_max_pool_gives_every_tied_maximum_the_gradient():
  x = jnp.array([[1.0, 1.0], [0.0, 2.0]])[None, :, :, None]
  ties = jnp.array([[3.0, 3.0], [0.0, 0.0]])[None, :, :, None]
  np.testing.assert_array_equal(
    jax.grad(lambda x: max_pool_2x2(x).sum())(x)[0, :, :, 0], [[0, 0], [0, 1]]
  )
  np.testing.assert_array_equal(
    jax.grad(lambda x: max_pool_2x2(x).sum())(ties)[0, :, :, 0], [[1, 1], [0, 0]]
  )


@pytest.mark.slow
def test_torch_initialization_draws_linear_and_conv_layers_from_pytorchs_bounds():
  flax_model = build_model("femnist_cnn", 10)
  torch_model = build_model("femnist_cnn", 10, initialization="torch")
  x = jnp.zeros((1, 28, 28, 1))
  params = torch_model.init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes(params, flax_model.init(jax.random.key(0), x))
  for name, fan_in in [("conv0", 25), ("conv1", 400), ("fc", 512), ("head", 256)]:
    bound = fan_in**-0.5
    for leaf in params[name].values():  # kernel and bias: U(-bound, bound), biases not zero
      assert float(jnp.abs(leaf).max()) <= bound
      assert float(jnp.abs(leaf).max()) > 0.8 * bound
  np.testing.assert_allclose(float(params["fc"]["kernel"].std()), 512**-0.5 / 3**0.5, rtol=0.02)
  # Other leaves (a transformer's embeddings, norms, 3-D attention kernels) keep theirs.
  lm, lm_torch = (
    build_model("transformer_lm", 20),
    build_model("transformer_lm", 20, "xla", "torch"),
  )
  tokens = jnp.zeros((1, 8), jnp.int32)
  plain = flax.traverse_util.flatten_dict(lm.init(jax.random.key(0), tokens))
  redrawn = flax.traverse_util.flatten_dict(lm_torch.init(jax.random.key(0), tokens))
  for path, leaf in plain.items():
    parent = plain.get((*path[:-1], "kernel"))
    dense = parent is not None and parent.ndim == 2 and path[-1] in ("kernel", "bias")
    assert np.array_equal(leaf, redrawn[path]) != dense, path
  assert any(path[-1] == "embedding" for path in plain)


def test_layer_groups_follow_the_forward_pass_not_the_key_order():
  # jax.eval_shape sorts a parameters dict's keys: ResNet-20's come head first, stem last;
  # "the last layers" read from them were the stem (FedALA adapted it; issue 46, finding 6).
  from fedjax_lab.ops.adaptive_aggregation import top_layers

  model = build_model("resnet20", 10)
  x = jnp.zeros((1, 32, 32, 3))
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  assert list(shapes)[0] == "head" and list(shapes)[-1] == "stem"
  groups = model.layer_groups(x)
  assert groups == GROUPS["resnet20"]
  assert [g for g in sorted(shapes) if top_layers(groups, 1)(f"{g}/kernel")] == ["head"]


def test_bag_of_words_is_counts_times_weights_padding_left_out():
  model = build_model("bag_of_words", 2)
  x = jnp.asarray([[5, 3, 5, 0, 0], [1, 0, 0, 0, 0]], jnp.int32)
  params = model.init(jax.random.key(0), x)
  weights = params["head"]["words"]["embedding"]
  bias = params["head"]["bias"]
  expected = jnp.stack([2 * weights[5] + weights[3], weights[1]]) + bias
  np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)
  beyond = jnp.asarray([[20000, 0]], jnp.int32)  # past the vocabulary: out of vocabulary (1)
  np.testing.assert_allclose(model.apply(params, beyond), (weights[1] + bias)[None], rtol=1e-6)


def test_bag_of_words_mean_pooling_is_word_frequencies_times_weights():
  from fedjax_lab.models.text import BagOfWordsOptions

  model = build_model("bag_of_words", 3, options=BagOfWordsOptions(pooling="mean"))
  x = jnp.asarray([[5, 3, 5, 0], [0, 0, 0, 0]], jnp.int32)
  params = model.init(jax.random.key(0), x)
  weights, bias = params["head"]["words"]["embedding"], params["head"]["bias"]
  expected = jnp.stack([(2 * weights[5] + weights[3]) / 3, jnp.zeros(3)]) + bias
  np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-6)
