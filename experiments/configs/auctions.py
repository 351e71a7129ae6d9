"""Position auctions (arXiv 2506.03309): MNL mechanisms vs baselines, cascade approximation.

MNL part: ``num_instances`` random auctions per bidder count in ``num_ads_sweep``, values
i.i.d. from ``value_distribution`` (uniform | exponential | bimodal), CTRs
p_ij = quality_i * position_j * lognormal noise. Mechanisms: VCG (welfare-optimal), Myerson
(revenue-optimal), GSP-like rank by v*p (always K ads), the same with the monopoly reserve.
Cascade part: the approximation vs brute force on small instances and vs the DP relaxation
bound on larger ones, next to rank-by-v*p; misreport gains of VCG-based cascade payments.

Run:  python -m experiments.auctions
      python -m experiments.auctions --config.num_instances=500 --config.value_distribution=bimodal
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.value_distribution = "uniform"
  c.num_instances = 300
  c.num_ads_sweep = "2,4,8,16"
  c.num_positions = 4
  c.max_ads = 3
  c.max_quality = 0.5
  c.ctr_noise = 0.3  # std of the log-normal factor that breaks CTR separability
  c.cascade_instances = 200
  c.cascade_small = "6,3,3"  # n, m, K for the brute-force comparison
  c.cascade_large = "200,10,5"  # n, m, K for the relaxation-bound certificate
  # Misreport check of VCG-based cascade payments (at cascade_small): up to this many auctions
  # where the approximation misses the optimum, searched among cascade_ic_max_draws draws.
  c.cascade_ic_instances = 30
  c.cascade_ic_max_draws = 2000
  c.cascade_max_exit = 0.5  # continuation c = (1 - p) (1 - e), e ~ U(0, max_exit)
  c.out_dir = "experiments/out/auctions"
  return c
