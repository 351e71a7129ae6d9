"""Position auctions in AI-generated content (arXiv 2506.03309): MNL and cascade user models.

  mnl            exact welfare / virtual-welfare maximization over K-matchings (Dinkelbach +
                 assignment; Charnes-Cooper LP cross-check)
  mechanisms     VCG and Myerson (ironed virtual values, exact threshold payments); cascade
                 VCG around a solver (truthful with an exact one)
  distributions  value distributions, virtual values, ironing
  cascade        optimal order of fixed pairs, approximate joint allocation, DP upper bound
  baselines      rank-by-v*p (GSP-like) allocation and pricing, the comparison point
  instances      random CTR / continuation generators
  brute_force    exhaustive references for tests

See docs/auctions.md for the modelling choices.
"""
from logitlab.auctions.baselines import RankedAllocation
from logitlab.auctions.baselines import rank_by_value_ctr
from logitlab.auctions.cascade import CascadeAllocation
from logitlab.auctions.cascade import cascade_allocation
from logitlab.auctions.cascade import cascade_click_probs
from logitlab.auctions.cascade import optimal_order
from logitlab.auctions.cascade import relaxation_bound
from logitlab.auctions.distributions import Exponential
from logitlab.auctions.distributions import Identity
from logitlab.auctions.distributions import Tabulated
from logitlab.auctions.distributions import Uniform
from logitlab.auctions.distributions import bimodal_uniform
from logitlab.auctions.mechanisms import AuctionOutcome
from logitlab.auctions.mechanisms import allocation_curve
from logitlab.auctions.mechanisms import cascade_vcg
from logitlab.auctions.mechanisms import myerson
from logitlab.auctions.mechanisms import vcg
from logitlab.auctions.mnl import MNLAllocation
from logitlab.auctions.mnl import NOT_SHOWN
from logitlab.auctions.mnl import max_weight_matching
from logitlab.auctions.mnl import mnl_allocation
from logitlab.auctions.mnl import mnl_allocation_lp
from logitlab.auctions.mnl import mnl_click_probs
from logitlab.auctions.mnl import mnl_objective
from logitlab.auctions.mnl import mnl_weights
