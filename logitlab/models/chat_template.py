"""Chat templates of Hugging Face checkpoints, rendered with jinja2 the way transformers does.

A checkpoint's chat template lives in ``chat_template.jinja`` (transformers >= 4.43 writes it
there) or in ``tokenizer_config.json["chat_template"]`` (a string, or a list of
``{"name", "template"}`` with a ``"default"`` entry). Rendering follows
``transformers.utils.chat_template_utils``: a sandboxed environment
(``ImmutableSandboxedEnvironment``) with ``trim_blocks``/``lstrip_blocks``, the
``loopcontrols`` extension, a ``tojson`` filter that does not HTML-escape, and the
``raise_exception`` / ``strftime_now`` globals; the tokenizer's special tokens
(``bos_token``, ``eos_token``, ...) are template variables. Templates are untrusted code:
the sandbox blocks attribute access to Python internals.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                   "mask_token")


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A jinja2 chat template and the special-token strings it may reference."""
  template: str
  special_tokens: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    if not isinstance(self.template, str) or not self.template.strip():
      raise ValueError(f"`template` must be a non-empty jinja2 string, got {self.template!r}.")
    if not all(isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(v, str) for v in pair)
               for pair in self.special_tokens):
      raise ValueError(f"`special_tokens` must be (name, token string) pairs, got "
                       f"{self.special_tokens!r}.")

  @classmethod
  def from_pretrained(cls, path: str | Path, name: str = "default") -> "ChatTemplate":
    """Reads the template of a checkpoint folder (see the module docstring).

    Raises FileNotFoundError naming the files looked at when the folder has no template,
    and KeyError naming the available ones when ``name`` is not among several templates.
    """
    path = Path(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    template = config.get("chat_template")
    jinja_file = path / "chat_template.jinja"
    if jinja_file.exists():
      template = jinja_file.read_text()
    if isinstance(template, list):
      named = {t["name"]: t["template"] for t in template}
      if name not in named:
        raise KeyError(f"`name` {name!r} is not a chat template of {config_file}; it has "
                       f"{sorted(named)}.")
      template = named[name]
    if not template:
      raise FileNotFoundError(f"No chat template in {path}: neither {jinja_file.name} nor a "
                              f"'chat_template' entry in {config_file.name}.")
    tokens = []
    for key in _SPECIAL_TOKENS:
      value = config.get(key)
      if isinstance(value, dict):  # an AddedToken serialization
        value = value.get("content")
      if isinstance(value, str):
        tokens.append((key, value))
    return cls(template=template, special_tokens=tuple(tokens))

  def render(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True,
             **kwargs) -> str:
    """The prompt text of a conversation, as ``tokenizer.apply_chat_template(messages,
    tokenize=False, add_generation_prompt=...)`` gives it.

    Args:
      messages: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``.
      add_generation_prompt: append the header that opens the assistant's turn.
      **kwargs: extra template variables (e.g. ``enable_thinking=False`` for Qwen3).
    """
    if not isinstance(messages, (list, tuple)) or not all(
        isinstance(m, dict) and "role" in m for m in messages):
      raise ValueError(f"`messages` must be a list of dicts with 'role' and 'content', got "
                       f"{messages!r:.200}.")
    return _compile(self.template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt,
        **dict(self.special_tokens), **kwargs)
