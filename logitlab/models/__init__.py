"""Flax NNX models: `small` (digits-scale nets), `vision` (CIFAR/ImageNet), `decoder_lm` (Llama/Qwen2)."""
