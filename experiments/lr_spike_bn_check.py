"""Diagnostic for the CNN+BN x1 cell of the LR-spike table: is the accuracy gap the guard's?

Trains CNN+BN on digits with full-batch Adam (lr 0.015, 200 steps, no spike), plain and
guarded, 3 seeds, and reports the final train loss, the test accuracy with BatchNorm in
eval mode (running statistics, as in the table) and with test-batch statistics, and the
fraction of steps whose proposal had r > 1.

Run:  python -m experiments.lr_spike_bn_check
"""
import jax
import jax.numpy as jnp
import numpy as np

from experiments import digits_trainer as dt
from logitlab import datasets


def main():
  x, y, x_test, y_test = (jnp.asarray(a) for a in datasets.digits())
  model = dt.functional_model("cnn_bn")
  params, rest = dt.stack_inits(model, np.arange(3))
  for method in ("adam", "guard"):
    tx = dt.make_optimizer(method, 0.015)

    def one(params, rest, seed, tx=tx):
      params, rest, losses, ratios = dt.train_run(model, tx, params, rest, (x, y), steps=200,
                                                  key=jax.random.key(seed))
      eval_mode, _ = model.forward(params, rest, x_test, train=False)
      batch_stats, _ = model.forward(params, rest, x_test, train=True)
      return (losses[-1], dt.accuracy(eval_mode, y_test), dt.accuracy(batch_stats, y_test),
              jnp.mean(ratios > 1))

    loss, acc_eval, acc_batch, capped = (
        np.asarray(o) for o in jax.jit(jax.vmap(one))(params, rest, jnp.arange(3)))
    print(f"{method:5s} final train loss {loss.round(3)}  test acc % eval-mode BN "
          f"{(100 * acc_eval).round(1)}  test-batch BN {(100 * acc_batch).round(1)}  "
          f"steps with r > 1 {capped.round(2)}")


if __name__ == "__main__":
  main()
