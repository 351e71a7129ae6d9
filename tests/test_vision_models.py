"""Vision models: shapes of every output, the middle feature / heads, BatchNorm modes, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from logitlab.models import vision

# name -> (input shape, constructor kwargs, feature_dim, middle_dim). Cheap to trace.
FAST = {
    "resnet8x4": ((2, 16, 16, 3), {}, 256, 128),
    "wrn_16_2": ((2, 16, 16, 3), {}, 128, 64),
    "vgg8": ((2, 16, 16, 3), {}, 512, 512),
    "resnet18": ((2, 32, 32, 3), {}, 512, 256),
    "deit_tiny": ((2, 16, 16, 3), {"image_size": 16, "patch_size": 8, "depth": 2}, 192, 192),
    "mlp": ((2, 40), {"in_features": 40, "hidden": (16, 24, 8)}, 8, 16),
    "conv1d": ((2, 40), {"channels": (8, 12, 16)}, 16, 12),
}
# The paper-scale nets: tracing alone takes ~5-50 s each on 2 cores.
SLOW = {
    "resnet20": ((2, 32, 32, 3), {}, 64, 32),
    "resnet56": ((2, 32, 32, 3), {}, 64, 32),
    "resnet110": ((2, 32, 32, 3), {}, 64, 32),
    "resnet32x4": ((2, 32, 32, 3), {}, 256, 128),
    "wrn_40_2": ((2, 32, 32, 3), {}, 128, 64),
    "vgg13": ((2, 32, 32, 3), {}, 512, 512),
    "mobilenetv2_half_cifar": ((2, 32, 32, 3), {}, 1280, 48),
    "mobilenetv1": ((2, 64, 64, 3), {}, 1024, 512),
    "mobilenetv2": ((2, 64, 64, 3), {}, 1280, 96),
    "resnet34": ((2, 64, 64, 3), {}, 512, 256),
    "deit_tiny_224": ((2, 224, 224, 3), {}, 192, 192),
}


def _output_shapes(name, shape, kwargs, **heads):
  registry_name = "deit_tiny" if name == "deit_tiny_224" else name

  def forward(x):
    model = vision.build(registry_name, 7, rngs=nnx.Rngs(0), **heads, **kwargs)
    return model.forward(x, train=True)

  out = jax.eval_shape(forward, jax.ShapeDtypeStruct(shape, jnp.float32))
  return {k: v.shape for k, v in out.items()}


def _check_shapes(name, spec):
  shape, kwargs, feature_dim, middle_dim = spec
  n = shape[0]
  plain = _output_shapes(name, shape, kwargs)
  assert plain == {"logits": (n, 7), "feature": (n, feature_dim),
                   "middle_feature": (n, middle_dim)}
  full = _output_shapes(name, shape, kwargs, aux_head="mlp", middle_head=True)
  assert full["aux_logits"] == (n, 7) and full["middle_logits"] == (n, 7)


@pytest.mark.parametrize("name", sorted(FAST))
def test_output_shapes(name):
  _check_shapes(name, FAST[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_output_shapes_paper_scale(name):
  _check_shapes(name, SLOW[name])


@nnx.jit(static_argnames="train")
def _forward(model, x, train=False):
  """One compile per model/shape: eager NNX dispatch is far slower than the jit on CPU."""
  return model.forward(x, train=train)


@pytest.fixture(scope="module")
def bn_model_parts():
  # resnet8x4's code path at width 4 (few distinct kernel shapes: init compiles fast), built
  # once; each test merges a fresh copy.
  model = vision.CifarResNet(5, depth=8, widths=(4, 4, 4, 4), aux_head="linear",
                             rngs=nnx.Rngs(0))
  return nnx.split(model)


def test_batchnorm_train_uses_batch_statistics_and_updates_running_averages(bn_model_parts):
  model = nnx.merge(*bn_model_parts)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3)) * 3.0 + 1.0
  stem_bn = model.stem.bn
  assert np.allclose(stem_bn.mean[...], 0.0)
  out = _forward(model, x, train=True)
  # PyTorch momentum 0.1: running_mean = 0.9 * 0 + 0.1 * batch_mean of the stem conv output.
  conv_out = jax.lax.conv_general_dilated(x, model.stem.conv.kernel[...], (1, 1),
                                          ((1, 1), (1, 1)),
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(stem_bn.mean[...], 0.1 * np.mean(conv_out, axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)
  # Train mode: sample 0's logits depend on the other samples (batch statistics).
  other = _forward(model, x.at[1:].multiply(5.0), train=True)
  assert not np.allclose(out["logits"][0], other["logits"][0], atol=1e-4)
  # The DHKD head is a second head on the same feature.
  np.testing.assert_allclose(out["aux_logits"], out["feature"] @ model.aux_head.kernel[...]
                             + model.aux_head.bias[...], rtol=1e-5, atol=1e-5)
  assert not np.allclose(out["aux_logits"], out["logits"])


def test_batchnorm_eval_is_per_example_and_leaves_statistics(bn_model_parts):
  model = nnx.merge(*bn_model_parts)
  x = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
  _forward(model, x, train=True)
  mean_before = np.asarray(model.stem.bn.mean[...]).copy()
  logits = _forward(model, x)["logits"]
  logits_other = _forward(model, x.at[1:].multiply(5.0))["logits"]
  np.testing.assert_allclose(logits[0], logits_other[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(model.stem.bn.mean[...], mean_before)


def test_vit_middle_feature_is_cls_token_at_half_depth():

  @nnx.jit
  def middle_and_manual(x):
    model = vision.build("deit_tiny", 3, rngs=nnx.Rngs(0), image_size=8, patch_size=4,
                         depth=2, dim=12, num_heads=2)
    patches = model.patch_embed(x).reshape(2, 4, 12)
    tokens = jnp.concatenate([jnp.broadcast_to(model.cls_token[...], (2, 1, 12)), patches], 1)
    tokens = model.blocks[0](tokens + model.pos_embed[...])
    return model.forward(x)["middle_feature"], tokens[:, 0]

  middle, manual = middle_and_manual(jax.random.normal(jax.random.key(3), (2, 8, 8, 3)))
  np.testing.assert_allclose(middle, manual, rtol=1e-5, atol=1e-5)


def test_bf16_input_gives_float32_logits_close_to_float32_input():
  model = vision.build("mlp", 4, rngs=nnx.Rngs(0), in_features=6, hidden=(8,))
  x = jax.random.normal(jax.random.key(4), (3, 6))
  logits_bf16 = _forward(model, x.astype(jnp.bfloat16))["logits"]
  assert logits_bf16.dtype == jnp.float32
  np.testing.assert_allclose(logits_bf16, _forward(model, x)["logits"], rtol=0.05, atol=0.05)


def test_wrong_input_rank_names_the_argument(bn_model_parts):
  model = nnx.merge(*bn_model_parts)
  with pytest.raises(ValueError, match=r"`x` must be a batch of inputs \[N, H, W, C\]"):
    _forward(model, jnp.ones((8, 8, 3)))


def test_unknown_model_and_bad_aux_head_raise():
  with pytest.raises(ValueError, match="Unknown model 'resnet9'"):
    vision.build("resnet9", 10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="`aux_head` must be None, 'linear', 'mlp' or 'dhkd_mlp'"):
    nnx.eval_shape(lambda: vision.build("mlp", 10, rngs=nnx.Rngs(0), in_features=4,
                                        aux_head="conv"))


def test_sharding_annotations_map_to_mesh_axes():
  from logitlab.training import mesh as mesh_lib
  model = nnx.eval_shape(lambda: vision.build("deit_tiny", 10, rngs=nnx.Rngs(0), image_size=8,
                                              patch_size=4, depth=2))
  params = nnx.state(model, nnx.Param)
  with nnx.logical_axis_rules(mesh_lib.LOGICAL_AXIS_RULES):
    specs = nnx.get_partition_spec(params)
  assert specs["blocks"][0]["fc1"]["kernel"].get_value() == jax.P("fsdp", "tensor")
  assert specs["head"]["kernel"].get_value() == jax.P("fsdp", "tensor")
