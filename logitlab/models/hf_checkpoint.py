"""Load and save Hugging Face checkpoint folders for ``DecoderLM``.

Families: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text (``decoder_lm.LMConfig``).
A folder holds ``config.json``, ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), ``tokenizer.json`` (read with the ``tokenizers``
package), optionally ``generation_config.json`` (``load_generation_config``) and
``tokenizer_config.json`` (chat template: ``logitlab.models.chat_template``). Parameter
names map one-to-one (HF stores ``nn.Linear`` weights as ``[out, in]``; NNX kernels are
``[in, out]``, hence the transposes):

  model.embed_tokens.weight                    [V, D]   embed_tokens.embedding
  model.layers.{i}.input_layernorm.weight      [D]      layers.{i}.input_layernorm.weight
  model.layers.{i}.self_attn.{q,k,v,o}_proj.weight^T    layers.{i}.self_attn.{q,k,v,o}_proj.kernel
  model.layers.{i}.self_attn.{q,k,v}_proj.bias          (Qwen2 only)
  model.layers.{i}.post_attention_layernorm.weight
  model.layers.{i}.mlp.{gate,up,down}_proj.weight^T
  model.layers.{i}.self_attn.{q,k}_norm.weight          (Qwen3, Gemma 3)
  model.layers.{i}.{pre,post}_feedforward_layernorm.weight   (Gemma 2/3)
  model.norm.weight                                     final_norm.weight
  lm_head.weight^T                             [D, V]   lm_head (absent when tied)

HF's Llama/Qwen2 q/k weights are already in the rotate_half RoPE layout ``rope`` uses, so
no permutation is needed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
from flax import nnx
from safetensors import flax as safetensors_flax

from logitlab import sampling
from logitlab.models import decoder_lm

_LAYER_RULES = (
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", ("input_layernorm", "weight"), False),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight",
     ("post_attention_layernorm", "weight"), False),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", ("self_attn", "{}_proj", "kernel"),
     True),
    (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.bias", ("self_attn", "{}_proj", "bias"),
     False),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", ("mlp", "{}_proj", "kernel"), True),
    (r"model\.layers\.(\d+)\.self_attn\.([qk])_norm\.weight", ("self_attn", "{}_norm", "weight"),
     False),
    (r"model\.layers\.(\d+)\.(pre|post)_feedforward_layernorm\.weight",
     ("{}_feedforward_layernorm", "weight"), False),
)
_GLOBAL_RULES = {
    "model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
    "model.norm.weight": (("final_norm", "weight"), False),
    "lm_head.weight": (("lm_head",), True),
}
SAFETENSORS_INDEX = "model.safetensors.index.json"


def hf_name_to_path(name: str) -> tuple[tuple[Any, ...], bool]:
  """Maps an HF tensor name to (``DecoderLM`` state path, transpose?); KeyError if unknown."""
  if name in _GLOBAL_RULES:
    return _GLOBAL_RULES[name]
  for pattern, template, transpose in _LAYER_RULES:
    match = re.fullmatch(pattern, name)
    if match:
      layer, *rest = match.groups()
      path = tuple(part.format(*rest) for part in template)
      return ("layers", int(layer), *path), transpose
  raise KeyError(f"Unexpected tensor {name!r} in the checkpoint.")


def _path_to_hf_name(path: tuple[Any, ...]) -> str:
  if path[0] == "layers":
    return "model.layers." + ".".join(str(p) for p in path[1:-1]) + (
        ".weight" if path[-1] in ("kernel", "weight") else "." + str(path[-1]))
  return {"embed_tokens": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
          "lm_head": "lm_head.weight"}[path[0]]


def _read_tensors(path: Path) -> dict[str, jax.Array]:
  index_file = path / SAFETENSORS_INDEX
  if index_file.exists():
    files = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
  else:
    files = sorted(p.name for p in path.glob("*.safetensors"))
  if not files:
    raise FileNotFoundError(f"No *.safetensors files in {path}.")
  tensors = {}
  for file in files:
    tensors.update(safetensors_flax.load_file(str(path / file)))
  return tensors


def load_hf_checkpoint(path: str | Path, *, dtype: Any = jnp.float32,
                       require_tokenizer: bool = True
                       ) -> tuple[decoder_lm.DecoderLM, tokenizers.Tokenizer | None]:
  """Loads ``(model, tokenizer)`` from a local HF checkpoint folder.

  Args:
    path: folder with ``config.json``, safetensors weights (single file or sharded with an
      index) and ``tokenizer.json``.
    dtype: parameter dtype (float32 or bfloat16); weights are cast on load.
    require_tokenizer: when False, a folder without ``tokenizer.json`` gives tokenizer None.

  Raises:
    FileNotFoundError naming ``tokenizer.json`` when it is missing (and required);
    ValueError when the tokenizer has more ids than the model's ``vocab_size`` (its tokens
    would index past the embedding); KeyError / ValueError when a tensor is unexpected,
    missing or has the wrong shape.
  """
  path = Path(path)
  config = decoder_lm.LMConfig.from_hf_dict(json.loads((path / "config.json").read_text()),
                                            param_dtype=dtype)
  tokenizer_file = path / "tokenizer.json"
  tokenizer = None
  if tokenizer_file.exists():
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > config.vocab_size:
      raise ValueError(f"{tokenizer_file} has {size} token ids but config.json's vocab_size is "
                       f"{config.vocab_size}: the tokenizer does not belong to this model.")
  elif require_tokenizer:
    raise FileNotFoundError(f"{tokenizer_file} not found: the checkpoint folder needs its "
                            f"tokenizer (or pass require_tokenizer=False).")
  abstract = nnx.eval_shape(lambda: decoder_lm.DecoderLM(config, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  expected = {tuple(p): v for p, v in nnx.to_flat_state(state)}
  loaded = {}
  tensors = _read_tensors(path)
  if config.tie_word_embeddings:
    tensors.pop("lm_head.weight", None)  # some exporters write the tied copy too
  for name, tensor in tensors.items():
    if re.fullmatch(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq", name):
      continue  # a buffer older exporters save; recomputed from rope_theta
    target, transpose = hf_name_to_path(name)
    if target not in expected:
      raise KeyError(f"Tensor {name!r} has no place in a {config.model_type} model with "
                     f"tie_word_embeddings={config.tie_word_embeddings}.")
    value = tensor.T if transpose else tensor
    want = expected[target].shape
    if value.shape != want:
      raise ValueError(f"Tensor {name!r} has shape {tensor.shape}; config.json implies "
                       f"{want[::-1] if transpose else want}.")
    loaded[target] = jnp.asarray(value, dtype)
  missing = sorted(_path_to_hf_name(p) for p in expected if p not in loaded)
  if missing:
    raise KeyError(f"Checkpoint {path} lacks tensors: {missing[:8]}"
                   f"{' ...' if len(missing) > 8 else ''}")
  for target, var in expected.items():
    var.set_value(loaded[target])
  model = nnx.merge(graphdef, nnx.from_flat_state(expected))
  return model, tokenizer


def load_generation_config(path: str | Path) -> sampling.GenerationConfig:
  """The folder's decoding defaults: ``generation_config.json`` (every EOS id, sampling
  settings), with token ids it lacks taken from ``config.json``, as transformers does.
  Without ``generation_config.json``: greedy decoding stopping at ``config.json``'s EOS ids."""
  path = Path(path)
  model_config = json.loads((path / "config.json").read_text())
  file = path / "generation_config.json"
  generation = json.loads(file.read_text()) if file.exists() else {}
  return sampling.GenerationConfig.from_hf_dict(generation, fallback=model_config)


def save_hf_checkpoint(model: decoder_lm.DecoderLM, tokenizer: tokenizers.Tokenizer | None,
                       path: str | Path, *, max_shard_bytes: int | None = None) -> None:
  """Writes ``model`` (and ``tokenizer``) as an HF folder that ``load_hf_checkpoint`` and
  ``transformers.AutoModelForCausalLM`` read.

  Args:
    max_shard_bytes: when set, splits weights into ``model-0000i-of-0000n.safetensors``
      shards of at most this size plus ``model.safetensors.index.json``.
  """
  if not isinstance(model, decoder_lm.DecoderLM):
    raise TypeError(f"`model` must be a decoder_lm.DecoderLM, got {type(model).__name__}.")
  if tokenizer is not None and not isinstance(tokenizer, tokenizers.Tokenizer):
    raise TypeError(f"`tokenizer` must be a tokenizers.Tokenizer or None, got "
                    f"{type(tokenizer).__name__}.")
  if max_shard_bytes is not None and (not isinstance(max_shard_bytes, int)
                                      or max_shard_bytes < 1):
    raise ValueError(f"`max_shard_bytes` must be None or an int >= 1, got {max_shard_bytes!r}.")
  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  config = model.config
  (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
  tensors = {}
  for state_path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    state_path = tuple(state_path)
    _, transpose = hf_name_to_path(_path_to_hf_name(state_path))
    value = np.asarray(jax.device_get(var.get_value()))
    # Contiguous copies: safetensors serializes the raw buffer.
    tensors[_path_to_hf_name(state_path)] = jnp.asarray(np.ascontiguousarray(
        value.T if transpose else value))
  if max_shard_bytes is None:
    shards = [dict(sorted(tensors.items()))]
  else:
    shards, size = [{}], 0
    for name, value in sorted(tensors.items()):
      if shards[-1] and size + value.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][name] = value
      size += value.nbytes
  for old in path.glob("*.safetensors"):
    old.unlink()
  (path / SAFETENSORS_INDEX).unlink(missing_ok=True)
  metadata = {"format": "pt"}  # transformers refuses files without this tag
  if len(shards) == 1:
    safetensors_flax.save_file(shards[0], str(path / "model.safetensors"), metadata=metadata)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      safetensors_flax.save_file(shard, str(path / file), metadata=metadata)
      weight_map.update({name: file for name in shard})
    total = sum(v.nbytes for v in tensors.values())
    (path / SAFETENSORS_INDEX).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  eos = config.eos_token_ids
  generation = {"bos_token_id": config.bos_token_id,
                "eos_token_id": list(eos) if len(eos) > 1 else (eos[0] if eos else None),
                "pad_token_id": config.pad_token_id}
  (path / "generation_config.json").write_text(json.dumps(generation, indent=2))
  if tokenizer is not None:
    tokenizer.save(str(path / "tokenizer.json"))
