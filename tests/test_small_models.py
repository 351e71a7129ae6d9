"""The digits-scale classifiers of `logitlab.models.small`."""

import jax
import numpy as np
import pytest
from flax import nnx

from logitlab.models import small


@pytest.mark.parametrize("kernel_size,in_features", [((3, 3), 1), ((3, 3), 5), ((2, 2), 3),
                                                      ((1, 3), 4)])
def test_conv_as_matmul_equals_xla_convolution(kernel_size, in_features):
  conv = nnx.Conv(in_features, 6, kernel_size, rngs=nnx.Rngs(0))
  h = jax.random.normal(jax.random.key(1), (4, 8, 8, in_features))
  np.testing.assert_allclose(small._conv_same_as_matmul(conv, h), conv(h), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", small.ARCHITECTURES)
def test_every_architecture_maps_images_to_logits(name):
  model = small.build(name, 10, rngs=nnx.Rngs(0))
  model.eval()
  x = jax.random.uniform(jax.random.key(0), (3, 8, 8))
  logits = model(x)
  assert logits.shape == (3, 10) and bool(np.isfinite(np.asarray(logits)).all())
  np.testing.assert_allclose(model(x[..., None]), logits, rtol=1e-6)  # [B, H, W, 1] too


def test_bad_input_and_unknown_architecture_raise_clear_errors():
  model = small.build("cnn", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"`x` must be images \[B, H, W\]"):
    model(np.zeros((3, 64), np.float32))
  with pytest.raises(ValueError, match="Unknown architecture 'resnet'"):
    small.build("resnet", rngs=nnx.Rngs(0))
