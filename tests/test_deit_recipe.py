"""The DeiT training recipe (USKD DeiT-Tiny row): Mixup / CutMix, RandomErasing, AdamW.

NumPy / torch ports of cls_KD's mmcls 1.x code (yzd-v/cls_KD @ 1e5d48f):
mmcls/models/utils/batch_augments/mixup.py:36-53 (Mixup.mix), cutmix.py:87-113 (rand_bbox),
115-133 (cutmix_bbox_and_lam), 135-152 (CutMix.mix), wrapper.py:68 (uniform choice);
configs/_base_/schedules/imagenet_bs1024_adamw_swin.py:3-31 (AdamW, LinearLR + cosine),
configs/deit/deit-small_pt-4xb256_in1k.py:39-47 (no decay on norm / bias / cls_token /
pos_embed, clip_grad 5).
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from logitlab.models import vision
from logitlab.training import data as data_lib
from logitlab.training import mixing, optimizers


def _official_mixup(x, y, lam, index):  # mixup.py:49-53, with lam and randperm given
  return lam * x + (1 - lam) * x[index], lam * y + (1 - lam) * y[index]


def _official_cutmix(x, y, lam, index, cy, cx):  # cutmix.py:100-152, randint draws given
  img_h, img_w = x.shape[1:3]
  ratio = np.sqrt(1 - lam)
  cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
  yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h)
  xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w)
  lam = 1. - (yh - yl) * (xh - xl) / float(img_h * img_w)
  x = x.copy()
  x[:, yl:yh, xl:xh] = x[index, yl:yh, xl:xh]
  return x, lam * y + (1 - lam) * y[index], lam


def _batch(rng, n=6, size=13, classes=5):
  x = rng.normal(size=(n, size, size + 2, 3)).astype(np.float32)
  return x, mixing.one_hot(rng.integers(0, classes, n), classes)


def test_mixup_and_cutmix_match_the_official_code():
  rng = np.random.default_rng(0)
  for trial in range(20):
    x, y = _batch(rng)
    out_x, out_y, info = mixing.mixup_or_cutmix(x, y, np.random.default_rng(trial))
    # Label mass is conserved and each row is a distribution over at most two classes.
    np.testing.assert_allclose(out_y.sum(-1), 1.0, rtol=1e-6)
    assert out_y.min() >= 0 and np.all((out_y > 0).sum(-1) <= 2)
    if info["kind"] == "mixup":
      ref_x, ref_y = _official_mixup(x, y, info["lam"], info["perm"])
    else:
      top, bottom, left, right = info["box"]
      # The same draws as mixup_or_cutmix: switch, Beta, permutation, box centre.
      g = np.random.default_rng(trial)
      g.random()
      lam_beta = g.beta(1.0, 1.0)
      g.permutation(len(x))
      cy, cx = int(g.integers(0, x.shape[1])), int(g.integers(0, x.shape[2]))
      ref_x, ref_y, ref_lam = _official_cutmix(x, y, lam_beta, info["perm"], cy, cx)
      # The box area ratio is exactly 1 - lam.
      assert (bottom - top) * (right - left) / (x.shape[1] * x.shape[2]) == pytest.approx(
          1 - info["lam"])
      assert info["lam"] == pytest.approx(ref_lam)
    np.testing.assert_allclose(out_x, ref_x, rtol=1e-6)
    np.testing.assert_allclose(out_y, ref_y, rtol=1e-6)
    assert not np.array_equal(out_x, x)  # something was mixed


def test_switch_probability_and_lambda_distribution():
  x, y = _batch(np.random.default_rng(1), n=4, size=8)
  infos = [mixing.mixup_or_cutmix(x, y, np.random.default_rng(s))[2] for s in range(600)]
  kinds = [i["kind"] for i in infos]
  assert 0.43 < kinds.count("cutmix") / len(kinds) < 0.57  # switch prob 0.5, 600 draws
  mixup_lams = [i["lam"] for i in infos if i["kind"] == "mixup"]
  # Beta(0.8, 0.8) has mean 0.5 and variance 1 / (4 (2 alpha + 1)) = 0.0962.
  assert np.var(mixup_lams) == pytest.approx(0.0962, abs=0.02)
  only_mixup = mixing.mixup_or_cutmix(x, y, np.random.default_rng(0), switch_prob=0.0)[2]
  assert only_mixup["kind"] == "mixup"


def test_mixing_rejects_bad_input():
  x, y = _batch(np.random.default_rng(2))
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="`labels` must be"):
    mixing.mixup_or_cutmix(x, y[:3], rng)
  with pytest.raises(ValueError, match="`images` must be"):
    mixing.mixup_or_cutmix(x[0], y, rng)
  with pytest.raises(ValueError, match="`mixup_alpha`"):
    mixing.mixup_or_cutmix(x, y, rng, mixup_alpha=0.0)
  with pytest.raises(ValueError, match="`switch_prob`"):
    mixing.mixup_or_cutmix(x, y, rng, switch_prob=1.5)
  with pytest.raises(ValueError, match=r"class indices in \[0, 5\)"):
    mixing.one_hot(np.array([0, 5]), 5)


def test_mixed_batches_are_a_function_of_the_position():
  x, _ = _batch(np.random.default_rng(3), n=16, size=6)
  labels = np.arange(16, dtype=np.int32) % 4
  source = data_lib.ArraySource(image=x, label=labels)
  make = lambda: mixing.MixedBatches(
      data_lib.ResumableBatches(source, global_batch_size=4, seed=0, num_threads=1), 4,
      seed=7)
  first = make()
  batches = [next(first) for _ in range(3)]
  resumed = make()
  resumed.set_state({"position": 2})
  np.testing.assert_array_equal(next(resumed)["image"], batches[2]["image"])
  assert batches[0]["label"].shape == (4, 4) and batches[0]["label"].dtype == np.float32


def test_random_erasing_fills_a_box_with_noise_of_the_dataset_statistics():
  image = np.full((64, 64, 3), 7, np.uint8)
  mean, std = data_lib.NORMALIZATION["imagenet2012"]
  erased = [data_lib.random_erasing(image, np.random.default_rng(s), mean, std)
            for s in range(200)]
  changed = [e for e in erased if not np.array_equal(e, image)]
  assert 0.15 < len(changed) / len(erased) < 0.35  # erase_prob 0.25
  fractions = [np.mean(np.any(e != image, -1)) for e in changed]
  assert min(fractions) >= 0.015 and max(fractions) <= 1 / 3 + 0.02
  box = changed[0][np.any(changed[0] != image, -1)]
  np.testing.assert_allclose(box.mean(0) / 255, mean, atol=0.05)


def test_deit_transform_output():
  transform = data_lib.image_transform("imagenet2012", train=True, augment="deit")
  image = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
  out = transform({"image": image, "label": 3}, np.random.default_rng(1))
  assert out["image"].shape == (224, 224, 3) and out["image"].dtype == np.float32
  with pytest.raises(ValueError, match="`augment`"):
    data_lib.image_transform("imagenet2012", train=True, augment="autoaugment")
  with pytest.raises(ValueError, match="training transform"):
    data_lib.image_transform("imagenet2012", train=False, augment="deit")


def test_warmup_cosine_schedule_matches_mmcls():
  lr, steps, warmup = 1e-3, 100, 20
  schedule = optimizers.warmup_cosine_schedule(lr, steps, warmup)
  for step in (0, 7, 19):  # LinearLR(start_factor=1e-3), iteration based
    assert schedule(step) == pytest.approx(lr * (1e-3 + (1 - 1e-3) * step / warmup), rel=1e-5)
  for step in (20, 50, 99, 100):  # CosineAnnealingLR(eta_min=1e-5) after the warmup
    expected = 1e-5 + (lr - 1e-5) * (1 + np.cos(np.pi * (step - warmup) / (steps - warmup))) / 2
    assert schedule(step) == pytest.approx(expected, rel=1e-4)
  with pytest.raises(ValueError, match="`warmup_steps`"):
    optimizers.warmup_cosine_schedule(lr, 10, 10)


def test_adamw_recipe_matches_torch_adamw_with_param_groups_and_clipping():
  """Three steps on a small ViT: optax chain == torch AdamW (decay / no-decay groups as
  mmcls builds them) after ``clip_grad_norm_(5)``, gradients scaled so clipping is active."""
  torch = pytest.importorskip("torch")
  # The mask on a real ViT's parameter tree (abstract: building one eagerly is slow).
  abstract = nnx.state(nnx.eval_shape(lambda: vision.build(
      "deit_tiny", 4, rngs=nnx.Rngs(0), image_size=8, patch_size=4, dim=12, depth=1,
      num_heads=2)), nnx.Param)
  flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
  mask = jax.tree_util.tree_leaves(optimizers.decay_mask(abstract))
  names = [jax.tree_util.keystr(path) for path, _ in flat]
  assert len(mask) == len(names) and any(mask) and not all(mask)
  for decays, name, (_, leaf) in zip(mask, names, flat):
    no_decay = "cls_token" in name or "pos_embed" in name or leaf.ndim < 2
    assert decays != no_decay, name
  # The update on a small tree with the same kinds of leaves.
  rng = np.random.default_rng(0)
  params = {"cls_token": rng.normal(size=(1, 1, 4)), "pos_embed": rng.normal(size=(1, 3, 4)),
            "fc": {"kernel": rng.normal(size=(4, 6)), "bias": rng.normal(size=(6,))},
            "norm": {"scale": rng.normal(size=(4,))}}
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  mask = jax.tree_util.tree_leaves(optimizers.decay_mask(params))
  assert sum(mask) == 1  # only fc.kernel
  steps, warmup = 10, 2
  tx = optimizers.adamw_warmup_cosine(1e-2, steps, warmup, weight_decay=0.05)
  state = tx.init(params)
  tparams = [torch.nn.Parameter(torch.tensor(np.asarray(l), dtype=torch.float64))
             for l in leaves]
  groups = [{"params": [p for p, m in zip(tparams, mask) if m], "weight_decay": 0.05},
            {"params": [p for p, m in zip(tparams, mask) if not m], "weight_decay": 0.0}]
  topt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
  schedule = optimizers.warmup_cosine_schedule(1e-2, steps, warmup)
  current = params
  update = jax.jit(tx.update)
  for step in range(3):
    grads_np = [10 * rng.normal(size=l.shape) for l in leaves]
    grads = treedef.unflatten([np.asarray(g, np.float32) for g in grads_np])
    updates, state = update(grads, state, current)
    current = optax.apply_updates(current, updates)
    for group in topt.param_groups:
      group["lr"] = float(schedule(step))
    for p, g in zip(tparams, grads_np):
      p.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_norm_(tparams, 5.0)
    topt.step()
  for ours, theirs in zip(jax.tree_util.tree_leaves(current), tparams):
    np.testing.assert_allclose(np.asarray(ours), theirs.detach().numpy(), rtol=2e-4,
                               atol=2e-6)


def test_optimizer_from_config():
  tx = optimizers.from_config({"name": "adamw_warmup_cosine", "learning_rate": 1e-3,
                               "warmup_epochs": 2}, steps=10, steps_per_epoch=3)
  assert isinstance(tx, optax.GradientTransformation)
  with pytest.raises(ValueError, match="optimizer `name`"):
    optimizers.from_config({"name": "lamb"}, 10, 1)
  with pytest.raises(ValueError, match="`decay_at`"):
    optimizers.step_decay_sgd(0.1, 10, decay_at=(1.5,))


def test_recipe_label_smoothing_on_mixed_labels():
  """mmcls LabelSmoothLoss(0.1, "original") on mixed labels: target (1 - eps) q + eps / C."""
  from logitlab import kd_recipes
  rng = np.random.default_rng(4)
  z, middle = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(2))
  _, q = _batch(rng, n=6, classes=5)
  q = mixing.mixup(np.zeros((6, 1, 1, 1), np.float32), q, 0.7, rng.permutation(6))[1]
  recipe = kd_recipes.Recipe("uskd", label_smoothing=0.1)
  terms = kd_recipes.loss_terms(recipe, {"logits": z, "middle_logits": middle}, None, q, 1.0)
  target = 0.9 * q + 0.1 / 5
  log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(terms["ce"], -(target * log_p).sum(-1).mean(), rtol=1e-5)
