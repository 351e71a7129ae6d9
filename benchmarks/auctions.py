"""Scale benchmark for position auctions (arXiv 2506.03309): time per auction, n <= 1000, m <= 20.

For each (n, m, K): the exact MNL allocation (Dinkelbach + pruned assignment) against the
Charnes-Cooper LP (HiGHS) on the same instance (speed ratio and value ratio, which must be 1),
VCG (<= K + 1 allocations), Myerson with U[0, 1] values (exact breakpoints), the cascade
approximation with its ratio to brute force (small n) or to the DP relaxation bound (certified
lower bound on the true ratio), and VCG-based cascade payments around the approximation.

Run:  python -m benchmarks.auctions            (appends to BENCHMARKS.md)
      python -m benchmarks.auctions --reps 1 --no-append
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from tqdm import tqdm

from benchmarks.report import report
from logitlab import auctions
from logitlab.auctions import brute_force
from logitlab.auctions import instances

SIZES = ((6, 3, 3), (100, 10, 5), (1000, 20, 5), (1000, 20, 20))


def timed(fn, reps):
  """(mean seconds per call after one untimed warm-up call, last result)."""
  fn()
  start = time.perf_counter()
  for _ in range(reps):
    result = fn()
  return (time.perf_counter() - start) / reps, result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--no-append", action="store_true")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  rows = []
  for num_ads, num_positions, max_ads in tqdm(SIZES, desc="sizes"):
    values = rng.uniform(size=num_ads)
    ctr = instances.random_ctr(rng, num_ads, num_positions)
    conts = instances.random_continuation(rng, ctr)
    t_mnl, exact = timed(lambda: auctions.mnl_allocation(values, ctr, max_ads), args.reps)
    t_lp, lp = timed(lambda: auctions.mnl_allocation_lp(values, ctr, max_ads), args.reps)
    t_vcg, _ = timed(lambda: auctions.vcg(values, ctr, max_ads), args.reps)
    t_myerson, _ = timed(lambda: auctions.myerson(values, ctr, max_ads, auctions.Uniform()),
                         args.reps)
    t_cascade, approx = timed(
        lambda: auctions.cascade_allocation(values, ctr, conts, max_ads), args.reps)
    t_cascade_vcg, _ = timed(lambda: auctions.cascade_vcg(values, ctr, conts, max_ads), 1)
    if num_ads <= 7:
      reference, reference_name = brute_force.cascade_brute_force(
          values, ctr, conts, max_ads).value, "brute force"
      assert abs(brute_force.mnl_brute_force(values, ctr, max_ads)[1] - exact.value) < 1e-12
    else:
      reference, reference_name = approx.upper_bound, "DP bound"
    rows.append([num_ads, num_positions, max_ads, 1e3 * t_mnl, exact.iterations,
                 1e3 * t_lp, t_lp / t_mnl, exact.value / lp.value, 1e3 * t_vcg,
                 1e3 * t_myerson, 1e3 * t_cascade, approx.value / reference, reference_name,
                 1e3 * t_cascade_vcg])
  header = ["n", "m", "K", "MNL exact ms", "Dinkelbach iters", "LP ms", "LP / exact time",
            "exact / LP value", "VCG ms", "Myerson ms", "cascade ms", "cascade ratio",
            "cascade reference", "cascade VCG ms"]
  report("Position auctions: time per auction (MNL exact, VCG, Myerson, cascade)",
         __spec__.name, header, rows,
         notes=("Single-threaded NumPy/SciPy on the host; CTRs from "
                "logitlab.auctions.instances.random_ctr, values U[0, 1]. 'cascade ratio' is "
                "value / brute-force optimum (n <= 7) or value / DP relaxation bound (a lower "
                "bound on value / optimum)."),
         append=not args.no_append)


if __name__ == "__main__":
  main()
