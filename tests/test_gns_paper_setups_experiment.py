"""The GNS paper's set-ups (experiments/gns_paper_setups.py) at a reduced size."""
import pytest

from experiments import gns_paper_setups
from experiments.configs import gns_paper_setups as setups_config


@pytest.mark.slow
def test_paper_setups_reach_the_tolerance_at_reduced_size():
  config = setups_config.get_config()
  config.update(logsumexp_dim=60, chebyshev_dim=30, max_iters_second_order=60,
                max_iters_first_order=400)
  results = gns_paper_setups.run(config)
  assert set(results) == {"logsumexp", "nonlinear_equations", "chebyshev"}
  for name, by_method in results.items():
    for method, r in by_method.items():
      gaps = r["gaps"]
      if method != "fast_gradient_method":  # FGM is not monotone
        assert all(b <= a + 1e-12 for a, b in zip(gaps, gaps[1:])), (name, method)
      if method.startswith(("gns", "super")):
        assert r["iters_to_tol"] is not None, (name, method)
