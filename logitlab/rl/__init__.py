"""Post-training in logit space: GRPO, SofT-GRPO, rewards and the RL trainer."""

from logitlab.rl.grpo import (GRPOLossConfig, aggregate, group_advantages, grpo_loss, k3_kl,
                              ppo_clipped_loss, sequence_log_ratio)
from logitlab.rl.logprobs import (entropy, final_hidden, sequence_logprobs, shift_right,
                                  token_logprobs_from_hidden)
