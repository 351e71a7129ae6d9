"""SSB teacher targets: loss error of stored top-k (renormalized / + rest bucket) vs the
full-vocabulary KL at the SSB distillation temperature (T = 2), V = 151936.

Synthetic teachers (no checkpoint here): Zipf(s) logits over V with the top-1 token lifted
to probability ``p1`` at T = 1, ids shuffled per position; the student is the teacher plus
Gaussian logit noise (sigma). Reports the mean teacher tail mass outside the top-k at T = 2
and the T^2-scaled KL of the three target kinds with their relative error vs the full KL.

Run:  python -m benchmarks.ssb_topk_error [--no-append]
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.report import report
from logitlab import distill_chunked

V = 151936
TEMPERATURE = 2.0


def teacher_logits(rng, n: int, zipf: float, p1: float) -> np.ndarray:
  ranks = np.arange(1, V + 1, dtype=np.float64)
  base = -zipf * np.log(ranks)
  rest = np.log(np.sum(np.exp(base[1:])))
  base[0] = np.log(p1 / (1 - p1)) + rest  # softmax(base)[0] = p1 at T = 1
  return np.stack([rng.permutation(base) for _ in range(n)]).astype(np.float32)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--positions", type=int, default=16)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  rows = []
  for zipf, p1 in ((1.1, 0.61), (2.5, 0.61)):
    teacher = jnp.asarray(teacher_logits(rng, args.positions, zipf, p1))
    for sigma in (0.5, 1.0):
      student = teacher + jnp.asarray(rng.normal(size=teacher.shape) * sigma, jnp.float32)
      full = TEMPERATURE**2 * float(jnp.mean(distill_chunked.divergence_from_logits(
          teacher, student, divergence="forward_kl", temperature=TEMPERATURE)))
      for k in (64, 1024):
        values, ids = jax.lax.top_k(teacher, k)
        rest = distill_chunked.tail_logprob(teacher, ids, TEMPERATURE)
        renorm = TEMPERATURE**2 * float(jnp.mean(distill_chunked.topk_forward_kl(
            values, ids, student, temperature=TEMPERATURE)))
        bucket = TEMPERATURE**2 * float(jnp.mean(distill_chunked.topk_rest_forward_kl(
            values, ids, rest, student, temperature=TEMPERATURE)))
        rows.append([f"zipf {zipf}, p1 {p1}", sigma, k, float(jnp.mean(jnp.exp(rest))), full,
                     renorm, (renorm - full) / full, bucket, (bucket - full) / full])
  report(f"SSB top-k teacher targets vs full vocabulary (V={V}, T={TEMPERATURE}, synthetic)",
         __spec__.name if __spec__ else "benchmarks.ssb_topk_error",
         ["teacher (T=1)", "student noise", "k", "tail mass at T=2", "full KL*T^2",
          "top-k renorm", "rel. err", "top-k + rest", "rel. err"], rows,
         notes="Synthetic teachers (Zipf logits, top-1 lifted to p1 at T=1), student = teacher "
               "+ N(0, sigma^2) logit noise; mean over positions. 'top-k + rest' is the KL of "
               "the (k+1)-bucket distributions (a lower bound of the full KL); 'top-k renorm' "
               "drops the tail and renormalizes the teacher over its top-k.",
         append=not args.no_append)


if __name__ == "__main__":
  main()
