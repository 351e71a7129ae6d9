"""Position auctions: welfare and revenue of the MNL mechanisms vs baselines; cascade ratios.

Position Auctions in AI-Generated Content (arXiv 2506.03309). For each bidder count n, draws
random auctions (values from the configured distribution, CTRs from
``logitlab.auctions.instances``) and reports, under the MNL user model, mean welfare and
revenue per auction of VCG, Myerson and the GSP-like rank-by-v*p baseline (without and with
the monopoly reserve; evaluated at truthful bids, although GSP is not truthful). For the
cascade model it reports the approximation's ratio to the brute-force optimum (small
instances) and to the DP relaxation bound (large ones), next to rank-by-v*p. Writes
``results.json`` and ``auctions.png`` to ``config.out_dir``.

Run:  python -m experiments.auctions
      python -m experiments.auctions --config.value_distribution=bimodal
"""
from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from logitlab import auctions
from logitlab.auctions import brute_force
from logitlab.auctions import cascade
from logitlab.auctions import instances


DISTRIBUTIONS = {
    "uniform": auctions.Uniform(),
    "exponential": auctions.Exponential(2.0),
    "bimodal": auctions.bimodal_uniform(0.75, (0.0, 0.5), (0.5, 1.0)),
}
MECHANISMS = ("vcg", "myerson", "gsp", "gsp_reserve")


def _ints(text):
  return [int(v) for v in str(text).split(",") if v]


def mnl_outcomes(values, ctr, max_ads, distribution) -> dict[str, tuple[float, float, int]]:
  """(welfare, revenue, ads shown) of each mechanism on one MNL auction."""
  outcomes = {"vcg": auctions.vcg(values, ctr, max_ads),
              "myerson": auctions.myerson(values, ctr, max_ads, distribution)}
  results = {name: (o.welfare(values), o.revenue, int(np.sum(o.assignment >= 0)))
             for name, o in outcomes.items()}
  # Myerson's lemma: E[revenue] = E[virtual welfare]; a check on the payment computation.
  results["myerson_virtual_welfare"] = outcomes["myerson"].welfare(
      distribution.virtual_value(values))
  monopoly_reserve = float(distribution.threshold_value(0.0))
  for name, reserve in (("gsp", 0.0), ("gsp_reserve", monopoly_reserve)):
    ranked = auctions.rank_by_value_ctr(values, ctr, max_ads, reserve=reserve)
    clicks = auctions.mnl_click_probs(ctr, ranked.assignment)
    results[name] = (float(values @ clicks), float(ranked.price_per_click @ clicks),
                     len(ranked.order))
  return results


def run_mnl(config, rng) -> dict:
  distribution = DISTRIBUTIONS[config.value_distribution]
  summary = {}
  for num_ads in _ints(config.num_ads_sweep):
    rows = []
    for _ in tqdm(range(config.num_instances), desc=f"MNL n={num_ads}", leave=False):
      values = distribution.sample(rng, num_ads)
      ctr = instances.random_ctr(rng, num_ads, config.num_positions,
                                 max_quality=config.max_quality, noise=config.ctr_noise)
      rows.append(mnl_outcomes(values, ctr, config.max_ads, distribution))
    summary[num_ads] = {
        name: {"welfare": float(np.mean([r[name][0] for r in rows])),
               "revenue": float(np.mean([r[name][1] for r in rows])),
               "ads_shown": float(np.mean([r[name][2] for r in rows])),
               "welfare_vs_opt": float(np.mean([r[name][0] / max(r["vcg"][0], 1e-300)
                                                for r in rows]))}
        for name in MECHANISMS}
    summary[num_ads]["myerson"]["virtual_welfare"] = float(
        np.mean([r["myerson_virtual_welfare"] for r in rows]))
  return summary


def rank_baseline_cascade_value(values, ctr, continuation, max_ads) -> float:
  """Cascade value of showing the rank-by-v*p ads in rank order."""
  ranked = auctions.rank_by_value_ctr(values, ctr, max_ads)
  rows, cols = ranked.order, ranked.assignment[ranked.order]
  return cascade.sequence_value(values[rows] * ctr[rows, cols], continuation[rows, cols])


def max_misreport_gain(mechanism, values, reports) -> float:
  """Largest utility gain any single bidder gets from a report on the grid (0 if truthful)."""
  truthful = mechanism(values).utilities(values)
  gain = 0.0
  for bidder in range(len(values)):
    for report in reports:
      reported = values.copy()
      reported[bidder] = report
      outcome = mechanism(reported)
      utility = values[bidder] * outcome.click_probs[bidder] - outcome.payments[bidder]
      gain = max(gain, utility - truthful[bidder])
  return gain


def cascade_incentives(config, rng) -> dict:
  """Misreport gains and negative payments of VCG-based payments around the approximation.

  Checked only on auctions where the approximation misses the brute-force optimum at the
  truthful profile: where it is exact, a misreport can only lower the (true) welfare the
  bidder's utility tracks, so no deviation can pay.
  """
  num_ads, num_positions, max_ads = _ints(config.cascade_small)
  gains, negative_payment, draws = [], [], 0
  progress = tqdm(total=config.cascade_ic_instances, desc="cascade IC", leave=False)
  while len(gains) < config.cascade_ic_instances and draws < config.cascade_ic_max_draws:
    draws += 1
    values = rng.uniform(size=num_ads)
    ctr = instances.random_ctr(rng, num_ads, num_positions, max_quality=config.max_quality,
                               noise=config.ctr_noise)
    conts = instances.random_continuation(rng, ctr, config.cascade_max_exit)
    optimum = brute_force.cascade_brute_force(values, ctr, conts, max_ads).value
    if auctions.cascade_allocation(values, ctr, conts, max_ads).value >= optimum - 1e-12:
      continue
    mechanism = lambda v: auctions.cascade_vcg(v, ctr, conts, max_ads)  # noqa: B023
    gains.append(max_misreport_gain(mechanism, values, np.linspace(0, 1, 11)))
    negative_payment.append(bool(np.any(mechanism(values).payments < -1e-12)))
    progress.update()
  progress.close()
  if not gains:
    return {"instances": 0, "draws": draws}
  gains = np.asarray(gains)
  return {"instances": len(gains), "draws": draws, "max_gain": float(gains.max()),
          "mean_gain": float(gains.mean()), "fraction_with_gain": float(np.mean(gains > 1e-9)),
          "fraction_negative_payment": float(np.mean(negative_payment))}


def run_cascade(config, rng) -> dict:
  """Ratios per size; empty when ``config.cascade_instances`` is 0 (MNL-only run)."""
  results = {}
  if config.cascade_instances <= 0:
    return results
  for label, (num_ads, num_positions, max_ads) in (("small", _ints(config.cascade_small)),
                                                   ("large", _ints(config.cascade_large))):
    approx, baseline, seconds = [], [], []
    for _ in tqdm(range(config.cascade_instances), desc=f"cascade {label}", leave=False):
      values = rng.uniform(size=num_ads)
      ctr = instances.random_ctr(rng, num_ads, num_positions, max_quality=config.max_quality,
                                 noise=config.ctr_noise)
      conts = instances.random_continuation(rng, ctr, config.cascade_max_exit)
      start = time.perf_counter()
      allocation = auctions.cascade_allocation(values, ctr, conts, max_ads)
      seconds.append(time.perf_counter() - start)
      if label == "small":
        reference = brute_force.cascade_brute_force(values, ctr, conts, max_ads).value
      else:
        reference = allocation.upper_bound
      approx.append(allocation.value / reference)
      baseline.append(rank_baseline_cascade_value(values, ctr, conts, max_ads) / reference)
    approx, baseline = np.asarray(approx), np.asarray(baseline)
    results[label] = {
        "n_m_K": [num_ads, num_positions, max_ads],
        "reference": "brute-force optimum" if label == "small" else "DP relaxation bound",
        "approx_ratio_mean": float(approx.mean()), "approx_ratio_min": float(approx.min()),
        "approx_exact_fraction": float(np.mean(approx >= 1 - 1e-9)),
        "rank_baseline_ratio_mean": float(baseline.mean()),
        "rank_baseline_ratio_min": float(baseline.min()),
        "seconds_per_auction": float(np.mean(seconds)),
        "approx_ratios": approx.tolist(), "rank_baseline_ratios": baseline.tolist()}
  if config.cascade_ic_instances > 0:
    results["incentives"] = cascade_incentives(config, rng)
  return results


def plot(mnl_summary, cascade_results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  sizes = sorted(mnl_summary)
  for name in MECHANISMS:
    axes[0].plot(sizes, [mnl_summary[n][name]["welfare"] for n in sizes], "o-", label=name)
    axes[1].plot(sizes, [mnl_summary[n][name]["revenue"] for n in sizes], "o-", label=name)
  for ax, title in zip(axes[:2], ("welfare per auction (MNL)", "revenue per auction (MNL)")):
    ax.set(xscale="log", xlabel="bidders n", title=title)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.legend()
  if not cascade_results:
    axes[2].set_visible(False)
    return _save(fig, path)
  small = cascade_results["small"]
  bins = np.linspace(min(small["rank_baseline_ratios"] + small["approx_ratios"]), 1.0, 30)
  axes[2].hist(small["approx_ratios"], bins=bins, alpha=0.7, label="approximation")
  axes[2].hist(small["rank_baseline_ratios"], bins=bins, alpha=0.7, label="rank by v*p")
  axes[2].set(xlabel="value / brute-force optimum", yscale="log",
              title=f"cascade, n,m,K = {small['n_m_K']}")
  axes[2].legend()
  _save(fig, path)


def _save(fig, path):
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(_):
  config = _CONFIG.value
  os.makedirs(config.out_dir, exist_ok=True)
  rng = np.random.default_rng(config.seed)
  mnl_summary = run_mnl(config, rng)
  cascade_results = run_cascade(config, rng)

  print(f"\nMNL, values ~ {config.value_distribution}, m={config.num_positions}, "
        f"K={config.max_ads}, {config.num_instances} auctions per n")
  print("| n | mechanism | welfare | welfare / opt | revenue | ads shown |")
  print("|---|---|---|---|---|---|")
  for num_ads, by_mechanism in mnl_summary.items():
    for name, r in by_mechanism.items():
      print(f"| {num_ads} | {name} | {r['welfare']:.4f} | {r['welfare_vs_opt']:.4f} | "
            f"{r['revenue']:.4f} | {r['ads_shown']:.2f} |")
    print(f"| {num_ads} | (myerson virtual welfare, = E revenue in expectation) | | | "
          f"{by_mechanism['myerson']['virtual_welfare']:.4f} | |")
  print("\n| cascade | n,m,K | reference | approx mean | approx min | approx exact | "
        "rank v*p mean | rank v*p min | ms/auction |")
  print("|---|---|---|---|---|---|---|---|---|")
  incentives = cascade_results.pop("incentives", None)
  for label, r in cascade_results.items():
    print(f"| {label} | {r['n_m_K']} | {r['reference']} | {r['approx_ratio_mean']:.4f} | "
          f"{r['approx_ratio_min']:.4f} | {r['approx_exact_fraction']:.3f} | "
          f"{r['rank_baseline_ratio_mean']:.4f} | {r['rank_baseline_ratio_min']:.4f} | "
          f"{1e3 * r['seconds_per_auction']:.2f} |")
  if incentives and not incentives["instances"]:
    print(f"\nThe cascade approximation matched brute force on all {incentives['draws']} "
          "auctions drawn for the misreport check, so VCG-based payments were truthful there.")
  elif incentives:
    print(f"\nVCG-based cascade payments around the approximation (n,m,K = "
          f"{config.cascade_small}, 11 reports per bidder, {incentives['instances']} auctions "
          f"where it misses the optimum, out of {incentives['draws']} drawn): "
          f"max misreport gain {incentives['max_gain']:.2e}, mean {incentives['mean_gain']:.2e}, "
          f"auctions with a profitable misreport {incentives['fraction_with_gain']:.3f}, with a "
          f"negative payment {incentives['fraction_negative_payment']:.3f}")
    cascade_results["incentives"] = incentives
  with open(os.path.join(config.out_dir, "results.json"), "w") as f:
    json.dump({"config": config.to_dict(), "mnl": mnl_summary, "cascade": cascade_results}, f,
              indent=1)
  plot(mnl_summary, cascade_results, os.path.join(config.out_dir, "auctions.png"))
  print(f"wrote {config.out_dir}/results.json and auctions.png")


if __name__ == "__main__":
  # Defined here, not at import, so tests can import several experiments.
  _CONFIG = config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), "configs", "auctions.py"),
      "Experiment config file.")
  app.run(main)
