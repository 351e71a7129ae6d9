"""Parity with PyTorch transcriptions of the official reference code (optional: the
``torch`` extra). The functions below follow megvii-research/mdistiller (KD, DKD),
sunshangquan/logit-standardization-KD (Z-score) and yzd-v/cls_KD (NKD with the fixed
non-target mask, USKD with its log-softmax rank score), including their numerics, so the
tests also show where those numerics break (|logits| = 1e4) and ours do not."""

import jax
import numpy as np
import pytest

from logitlab import losses

torch = pytest.importorskip("torch")
F = torch.nn.functional

N, C = 8, 10


def mdistiller_kd(logits_student, logits_teacher, temperature):
  log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
  pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
  loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
  return loss_kd * temperature**2


def mdistiller_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
  gt_mask = torch.zeros_like(logits_student).scatter_(1, target[:, None], 1).bool()
  other_mask = ~gt_mask

  def cat_mask(t):
    return torch.cat([(t * gt_mask).sum(1, keepdim=True), (t * other_mask).sum(1, keepdim=True)],
                     dim=1)

  pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1))
  pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1))
  tckd = (F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * temperature**2
          / target.shape[0])
  pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
  log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
  nckd = (F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum")
          * temperature**2 / target.shape[0])
  return alpha * tckd + beta * nckd


def ls_normalize(logit):
  mean = logit.mean(dim=-1, keepdims=True)
  stdv = logit.std(dim=-1, keepdims=True)
  return (logit - mean) / (1e-7 + stdv)


def cls_kd_nkd(logit_s, logit_t, gt_label, temp, gamma):
  label = gt_label.view(len(gt_label), 1)
  n = logit_s.shape[0]
  s_i = F.log_softmax(logit_s, dim=1)
  t_i = F.softmax(logit_t, dim=1)
  s_t = torch.gather(s_i, 1, label)
  t_t = torch.gather(t_i, 1, label).detach()
  loss_t = -(t_t * s_t).mean()
  mask = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
  logit_s = logit_s[mask].reshape(n, -1)
  logit_t = logit_t[mask].reshape(n, -1)
  S_i = F.log_softmax(logit_s / temp, dim=1)
  T_i = F.softmax(logit_t / temp, dim=1)
  loss_non = -gamma * temp**2 * (T_i * S_i).sum(dim=1).mean()
  return loss_t + loss_non


def cls_kd_uskd(w_fc, logit_s, gt_label, alpha, beta, mu):
  """USKDLoss.forward with the auxiliary head's logits passed in, plus the classifier's CE."""
  label = gt_label.view(len(gt_label), 1)
  n, c = logit_s.shape
  s_i = F.softmax(logit_s, dim=1)
  s_t = torch.gather(s_i, 1, label)
  p_t = s_t**2
  p_t = (p_t + 1 - p_t.mean(0, True)).detach()
  s_i = F.log_softmax(logit_s, dim=1)
  s_t = torch.gather(s_i, 1, label)
  loss_t = -(p_t * s_t).sum(dim=1).mean()
  target = torch.zeros_like(logit_s).scatter_(1, label, 0.9) + 0.1 * torch.ones_like(logit_s) / c
  loss_weak = -(mu * target * F.log_softmax(w_fc, dim=1)).sum(dim=1).mean()
  w_i = F.softmax(w_fc, dim=1)
  w_t = torch.gather(w_i, 1, label)
  rank = w_i / (1 - w_t.sum(1, keepdim=True) + 1e-6) + s_i / (1 - s_t.sum(1, keepdim=True) + 1e-6)
  _, rank = torch.sort(rank, descending=True, dim=-1)
  zipf_label = torch.gather((1 / torch.arange(1, c + 1)).repeat(n, 1), 1, torch.argsort(rank))
  mask = torch.ones_like(logit_s).scatter_(1, label, 0).bool()
  zipf_label = zipf_label[mask].reshape(n, -1)
  zipf_label = zipf_label / zipf_label.sum(1, keepdim=True)
  log_softmax_s = F.log_softmax(logit_s[mask].reshape(n, -1), dim=1)
  loss_non = -beta * (zipf_label * log_softmax_s).sum(dim=1).mean()
  return F.cross_entropy(logit_s, gt_label) + alpha * loss_t + loss_weak + loss_non


@pytest.fixture
def batch(rng):
  zs = (3 * rng.normal(size=(N, C))).astype(np.float32)
  zt = (3 * rng.normal(size=(N, C))).astype(np.float32)
  y = rng.integers(0, C, N).astype(np.int32)
  return zs, zt, y


def as_torch(zs, zt, y):
  return (torch.tensor(zs, dtype=torch.float64, requires_grad=True),
          torch.tensor(zt, dtype=torch.float64), torch.tensor(y, dtype=torch.int64))


def assert_value_and_student_grad_match(ours, reference, zs, zt, y, rtol=1e-5):
  """``ours(zs, zt, y)`` (JAX) vs ``reference(zs, zt, y)`` (torch float64): value and
  gradient with respect to the first argument."""
  value, grad = jax.value_and_grad(ours)(zs, zt, y)
  ts, tt, ty = as_torch(zs, zt, y)
  ref_value = reference(ts, tt, ty)
  ref_value.backward()
  np.testing.assert_allclose(value, ref_value.item(), rtol=rtol)
  np.testing.assert_allclose(grad, ts.grad.numpy(), rtol=1e-4,
                             atol=1e-6 * np.abs(ts.grad.numpy()).max())


def test_kd_and_standardized_kd_match_reference(batch):
  assert_value_and_student_grad_match(
      lambda zs, zt, y: losses.kd(zs, zt, temperature=4.0),
      lambda zs, zt, y: mdistiller_kd(zs, zt, 4.0), *batch)
  assert_value_and_student_grad_match(
      lambda zs, zt, y: losses.kd(losses.standardize(zs), losses.standardize(zt),
                                  temperature=2.0),
      lambda zs, zt, y: mdistiller_kd(ls_normalize(zs), ls_normalize(zt), 2.0), *batch)


def test_dkd_matches_reference_and_survives_where_it_does_not(batch):
  zs, zt, y = batch
  assert_value_and_student_grad_match(
      lambda zs, zt, y: losses.dkd(zs, zt, y, alpha=1.0, beta=8.0, temperature=4.0),
      lambda zs, zt, y: mdistiller_dkd(zs, zt, y, 1.0, 8.0, 4.0), *batch)
  # A confidently correct student at |logits| = 1e4: 1 - p_t underflows in the reference
  # (log 0) and the -1000 offset no longer masks the target.
  confident = np.where(np.eye(C, dtype=bool)[y], 1e4, -1e4).astype(np.float32)
  reference = mdistiller_dkd(*as_torch(confident, zt, y), 1.0, 8.0, 4.0)
  ours = losses.dkd(confident, zt, y, alpha=1.0, beta=8.0, temperature=4.0)
  assert not np.isfinite(reference.item()) and np.isfinite(ours)


def test_nkd_matches_reference(batch):
  assert_value_and_student_grad_match(
      lambda zs, zt, y: losses.nkd(zs, zt, y, temperature=3.0, gamma=3.5),
      lambda zs, zt, y: cls_kd_nkd(zs, zt, y, 3.0, 3.5), *batch)


def test_uskd_log_probs_option_matches_reference(batch):
  assert_value_and_student_grad_match(
      lambda zs, za, y: losses.uskd(zs, za, y, alpha=1.0, beta=0.1, mu=0.005,
                                    student_rank_scores="log_probs")[0],
      lambda zs, za, y: cls_kd_uskd(za, zs, y, 1.0, 0.1, 0.005), *batch)
