"""logitlab: a JAX/Flax research library for everything that happens in logit space.

Submodules, one per method family:
  ghosts          step-radius bound rho_a = pi/Delta_a, normalized step (Ghosts of Softmax)
  radius_guard    optax transform capping each update at r <= max_ratio
  lm_head_radius  per-token step radius of an LM through its head, in vocabulary chunks
  radius_estimators  reference-code estimators, aggregations and the logit-spread controller
  numerics        shared float32 / masking / divergence policy
  losses          KD, DKD, NKD, USKD, logit standardization, DHKD
  models          Flax NNX vision models and the decoder LM
  soft_thinking   soft-token decoding, Dirichlet / Gumbel variants, probes
  ngram           n-gram style priors injected into logits
  rl              GRPO and SofT-GRPO
  ssb             Semantic Soft Bootstrapping
  data_selection  ASLEC step-length-confounding-aware scores
  second_order    gradient-normalized smoothness methods
  auctions        position auctions (MNL, cascade)
  training        mesh, sharding, checkpointing, input pipelines, metrics
"""

__version__ = "0.1.0"

from logitlab import batched_radius
from logitlab import ghosts
from logitlab import numerics
from logitlab.ghosts import binary_radius
from logitlab.ghosts import directional_logits
from logitlab.ghosts import normalized_step
from logitlab.ghosts import radius
from logitlab.ghosts import top2_radius
from logitlab.nnx_logits import nnx_logits_fn
from logitlab.radius_guard import guard_metrics
from logitlab.radius_guard import radius_guard
from logitlab.radius_guard import RadiusGuardPlacementError
from logitlab.radius_guard import RadiusGuardPlacementWarning
from logitlab.radius_guard import RadiusGuardState
