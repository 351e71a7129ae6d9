"""Forward+backward time of each distillation loss, JAX (jitted) vs the same formulas in
PyTorch eager (CPU), measured side by side in one process.

  python -m benchmarks.kd_losses [--repeats 30] [--torch-threads 1] [--no-append]

Times are medians over ``repeats`` runs after warmup; the JAX/torch ratio is what to
read (absolute times depend on the machine's load). torch is optional (the ``torch``
extra); without it only the JAX column is reported. torch runs single-threaded by default:
on a shared 2-core machine its OpenMP workers spin-wait and a 1024x100 cross-entropy takes
~100 ms instead of ~0.4 ms, which would measure the machine's load, not the loss.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import report
from logitlab import losses

SHAPES = ((1024, 100), (256, 1000))

# loss(student, teacher, labels) -> scalar, with the papers' CIFAR/ImageNet defaults.
JAX_LOSSES = {
    "cross_entropy": lambda s, t, y: losses.cross_entropy(s, y),
    "kd": lambda s, t, y: losses.kd(s, t, temperature=4.0),
    "dkd": lambda s, t, y: losses.dkd(s, t, y, alpha=1.0, beta=8.0, temperature=4.0),
    "nkd": lambda s, t, y: losses.nkd(s, t, y, temperature=1.0, gamma=1.5),
    "uskd": lambda s, t, y: losses.uskd(s, t, y)[0],
    "kd+standardize": lambda s, t, y: losses.kd(losses.standardize(s), losses.standardize(t),
                                               temperature=2.0),
    "dhkd": lambda s, t, y: losses.dhkd(s, t, y, aux_logits=s, temperature=2.0)[0],
}


def torch_losses():
  """The same formulas in PyTorch, written like the reference repositories (gather,
  masked softmax), so the comparison is against what users would otherwise run."""
  import torch
  import torch.nn.functional as F

  def kl(log_p_teacher, log_p_student):
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)

  def non_target(z, y):
    return z.masked_fill(F.one_hot(y, z.shape[-1]).bool(), float("-inf"))

  def kd(s, t, y, T=4.0):
    return T**2 * kl(F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)).mean()

  def dkd(s, t, y, alpha=1.0, beta=8.0, T=4.0):
    def binary(z):
      lse = torch.logsumexp(z / T, -1)
      return torch.stack([(z / T).gather(1, y[:, None])[:, 0] - lse,
                          torch.logsumexp(non_target(z / T, y), -1) - lse], -1)
    tckd = kl(binary(t), binary(s))
    log_q = F.log_softmax(non_target(t / T, y), -1)
    log_p = F.log_softmax(non_target(s / T, y), -1)
    nckd = (log_q.exp() * (log_q - log_p).nan_to_num(0.0)).sum(-1)
    return T**2 * (alpha * tckd + beta * nckd).mean()

  def nkd(s, t, y, T=1.0, gamma=1.5):
    log_p = F.log_softmax(s, -1)
    q_t = F.softmax(t, -1).gather(1, y[:, None]).detach()
    loss_t = -(q_t * log_p.gather(1, y[:, None])).mean()
    q_hat = F.softmax(non_target(t / T, y), -1)
    log_p_hat = F.log_softmax(non_target(s / T, y), -1).masked_fill(q_hat == 0, 0.0)
    return loss_t - gamma * T**2 * (q_hat * log_p_hat).sum(-1).mean()

  def uskd(s, a, y, alpha=1.0, beta=0.1, mu=0.005):
    n, c = s.shape
    log_p = F.log_softmax(s, -1)
    p_t_sq = log_p.gather(1, y[:, None]).exp().detach()**2
    loss_t = -((p_t_sq + 1 - p_t_sq.mean()) * log_p.gather(1, y[:, None])).mean()
    smoothed = F.one_hot(y, c) * 0.9 + 0.1 / c
    log_w = F.log_softmax(a, -1)
    loss_weak = -(smoothed * log_w).sum(-1).mean()
    with torch.no_grad():
      w, p = log_w.exp(), log_p.exp()
      score = (w / (1 - w.gather(1, y[:, None]) + 1e-6)
               + p / (1 - p.gather(1, y[:, None]) + 1e-6))
      rank = torch.argsort(torch.argsort(score, dim=-1, descending=True, stable=True), dim=-1)
      zipf = (1.0 / (rank + 1)).masked_fill(F.one_hot(y, c).bool(), 0.0)
      zipf = zipf / zipf.sum(-1, keepdim=True)
    log_p_hat = F.log_softmax(non_target(s, y), -1).masked_fill(zipf == 0, 0.0)
    loss_non = -(zipf * log_p_hat).sum(-1).mean()
    return F.cross_entropy(s, y) + alpha * loss_t + beta * loss_non + mu * loss_weak

  def standardize(z):
    return (z - z.mean(-1, keepdim=True)) / (1e-7 + z.std(-1, keepdim=True))

  def dhkd(s, t, y, T=2.0):
    x = (s - t) / (2 * T)
    log_cosh = x.abs() + torch.log1p(torch.exp(-2 * x.abs())) - np.log(2.0)
    return F.cross_entropy(s, y) + T**2 * log_cosh.sum(-1).mean()

  return torch, {
      "cross_entropy": lambda s, t, y: F.cross_entropy(s, y),
      "kd": kd, "dkd": dkd, "nkd": nkd, "uskd": uskd,
      "kd+standardize": lambda s, t, y: kd(standardize(s), standardize(t), y, T=2.0),
      "dhkd": dhkd,
  }


def median_seconds(run, repeats: int) -> float:
  run()
  run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--torch-threads", type=int, default=1)
  parser.add_argument("--no-append", action="store_true", help="print only")
  args = parser.parse_args()
  try:
    torch, torch_fns = torch_losses()
  except ImportError:
    torch, torch_fns = None, {}
  if torch is not None:
    torch.set_num_threads(args.torch_threads)

  rows = []
  for n, c in SHAPES:
    rng = np.random.default_rng(0)
    student = (3 * rng.normal(size=(n, c))).astype(np.float32)
    teacher = (3 * rng.normal(size=(n, c))).astype(np.float32)
    labels = rng.integers(0, c, n).astype(np.int32)
    jax_args = tuple(map(jnp.asarray, (student, teacher, labels)))
    for name, loss in JAX_LOSSES.items():
      step = jax.jit(jax.value_and_grad(loss))
      jax_s = median_seconds(lambda: jax.block_until_ready(step(*jax_args)), args.repeats)
      row = [name, f"[{n}, {c}]", jax_s * 1e3]
      if name in torch_fns:
        s_t = torch.tensor(student, requires_grad=True)
        t_t, y_t = torch.tensor(teacher), torch.tensor(labels, dtype=torch.int64)

        def torch_step():
          s_t.grad = None
          value = torch_fns[name](s_t, t_t, y_t)
          value.backward()
          return value

        # Same formula on both sides: check values and gradients before timing.
        jax_value, jax_grad = step(*jax_args)
        torch_value = torch_step().item()
        rel_diff = max(abs(torch_value - float(jax_value)) / abs(torch_value),
                       float(np.max(np.abs(s_t.grad.numpy() - np.asarray(jax_grad)))
                             / np.max(np.abs(s_t.grad.numpy()))))
        assert rel_diff < 1e-4, (name, rel_diff)
        torch_s = median_seconds(torch_step, args.repeats)
        row += [torch_s * 1e3, torch_s / jax_s, f"{rel_diff:.1e}"]
      rows.append(row)

  header = ["loss", "shape [N, C]", "jax fwd+bwd ms"]
  if torch is not None:
    header += ["torch fwd+bwd ms", "torch/jax", "rel. diff"]
  notes = (f"Median of {args.repeats} runs; JAX jitted `value_and_grad` w.r.t. the student "
           "logits, torch eager `backward()`"
           + (f" (torch {torch.__version__}, {torch.get_num_threads()} threads)" if torch else
              " (torch not installed)")
           + ". torch/jax > 1 means JAX is faster. rel. diff: the larger of the values' "
           "relative difference and the gradients' max abs difference over the largest "
           "gradient entry (asserted < 1e-4 before timing).")
  report("Distillation losses: forward+backward", __spec__.name, header, rows, notes,
         append=not args.no_append)


if __name__ == "__main__":
  main()
