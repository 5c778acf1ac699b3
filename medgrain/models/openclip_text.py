"""open_clip's own text transformer (CLIP's: causal, pooled at the end-of-text token) as a medgrain text tower,
and CLIP's byte-pair tokenizer as a Hugging Face fast tokenizer (for word ids).

CLIP: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021,
arXiv:2103.00020. The tower wraps open_clip's ``TextTransformer`` unchanged, so its pooled output is
open_clip's ``encode_text`` (projection included, like medgrain's open_clip image tower); the tokens are
its final-norm hidden states, and the "[CLS] attention" MGCA weights words by is the end-of-text token's
row of the last block (a causal model has no [CLS]; that token is the one that has seen every word).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medgrain.data.text import Tokenizer
from medgrain.models.attention import CaptureInput, multihead_cls_attention
from medgrain.models.text import TextOutput

MODEL_TYPE = "open_clip_text"
POOL_TYPES = ("argmax", "eos")  # pooled at the end-of-text token, the only ones that mean "the whole text"


class OpenCLIPTextConfig:
    """What rebuilds the tower: open_clip's ``text_cfg``, the joint ``embed_dim`` and ``quick_gelu``.

    Quacks like a transformers config where medgrain stores one (``to_dict`` with a ``model_type``)."""

    def __init__(self, text_cfg: dict[str, Any], embed_dim: int, quick_gelu: bool = False):
        self.text_cfg = dict(text_cfg)
        self.embed_dim = int(embed_dim)
        self.quick_gelu = bool(quick_gelu)

    def to_dict(self) -> dict[str, Any]:
        return {"model_type": MODEL_TYPE, "text_cfg": copy.deepcopy(self.text_cfg),
                "embed_dim": self.embed_dim, "quick_gelu": self.quick_gelu}


def _check_text_cfg(text_cfg: dict[str, Any]) -> None:
    """Refuse what this tower would get wrong, naming the field."""
    if text_cfg.get("hf_model_name"):
        raise ValueError("a text_cfg with hf_model_name is a Hugging Face text tower, not open_clip's transformer")
    pool = text_cfg.get("pool_type", "argmax")
    if pool not in POOL_TYPES:
        raise ValueError(f"open_clip text_cfg pool_type={pool!r} is not supported; medgrain supports {POOL_TYPES}")
    for field in ("embed_cls", "no_causal_mask"):
        if text_cfg.get(field):
            raise ValueError(f"open_clip text_cfg {field}=true (CoCa / bidirectional) is not supported")


class OpenCLIPTextTower(nn.Module):
    """``forward(input_ids, attention_mask, tokens=False) -> TextOutput``; ``width`` is the pooled (projected)
    size, ``token_width`` the transformer's. ``attention_mask`` is not needed for the pooled output (the mask
    is causal and the pooled token is the first end-of-text), it only masks the token outputs."""

    def __init__(self, text_cfg: dict[str, Any], embed_dim: int, quick_gelu: bool = False):
        super().__init__()
        from open_clip.model import _build_text_tower

        _check_text_cfg(text_cfg)
        self._config = OpenCLIPTextConfig(text_cfg, embed_dim, quick_gelu)
        self.transformer = _build_text_tower(embed_dim, dict(text_cfg), quick_gelu)
        self.transformer.output_tokens = True
        self.token_width = self.transformer.width
        self.width = embed_dim if self.transformer.text_projection is not None else self.token_width
        self.pooling = "eot"

    @property
    def config(self) -> OpenCLIPTextConfig:
        return self._config

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """open_clip's own activation checkpointing of the text transformer's blocks."""
        self.transformer.set_grad_checkpointing(enable)

    def _pooled_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        if t.pool_type == "argmax":  # the end-of-text id is the largest; argmax takes the first
            return input_ids.argmax(dim=-1)
        return (input_ids == t.eos_id).int().argmax(dim=-1)

    def _run(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """open_clip's forward on ids padded to its context length (its causal mask has that size; padding
        after the end-of-text changes nothing before it), tokens cut back to the input's length."""
        length = input_ids.shape[1]
        context = self.transformer.context_length
        if length > context:
            raise ValueError(f"texts of {length} tokens exceed the text tower's context length {context}")
        pooled, hidden = self.transformer(F.pad(input_ids, (0, context - length), value=self.transformer.pad_id))
        return pooled, hidden[:, :length]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, tokens: bool = False) -> TextOutput:
        if not tokens:
            return TextOutput(self._run(input_ids)[0])
        attn: nn.MultiheadAttention = self.transformer.transformer.resblocks[-1].attn
        with CaptureInput(attn, "query") as captured:
            pooled, hidden = self._run(input_ids)
        length = input_ids.shape[1]
        x = captured.value[:, :length] if attn.batch_first else captured.value[:length]
        index = self._pooled_index(input_ids)
        positions = torch.arange(length, device=input_ids.device)
        keys = (positions[None] <= index[:, None]) & attention_mask.bool()  # causal: what the pooled token sees
        attention = multihead_cls_attention(attn, x, key_mask=keys, query_index=index)
        return TextOutput(pooled, hidden, attention)


def openclip_text_tower_from_config(config: dict[str, Any]) -> OpenCLIPTextTower:
    """Rebuild a (random) tower from ``OpenCLIPTextConfig.to_dict()``."""
    return OpenCLIPTextTower(config["text_cfg"], config["embed_dim"], config.get("quick_gelu", False))


def clip_bpe_tokenizer(max_length: int = 77) -> Tokenizer:
    """open_clip's ``SimpleTokenizer`` (OpenAI CLIP's byte-pair vocabulary, bundled with open_clip) as a
    Hugging Face fast ``CLIPTokenizer``: the same ids for the same text, plus word ids.

    Padding is the end-of-text token (open_clip pads with 0): the causal mask keeps padding from changing
    anything at or before the first end-of-text, where the text is pooled.
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    start, end = "<start_of_text>", "<end_of_text>"
    hf = CLIPTokenizer(
        vocab=dict(simple.encoder),
        merges=[tuple(pair) for pair in sorted(simple.bpe_ranks, key=simple.bpe_ranks.get)],
        bos_token=start, eos_token=end, unk_token=end, pad_token=end,
        model_max_length=max_length,
    )
    return Tokenizer(hf, max_length)
