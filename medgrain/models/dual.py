"""The dual encoder: an image tower and a text tower projected into one embedding space.

Global outputs (``encode_image``, ``encode_text``, ``forward``) serve CLIP and MGLL; token
outputs (``image_tokens``, ``text_tokens``) add the local features and [CLS] attention MGCA
aligns. ``forward`` follows open_clip: (image_features, text_features, logit_scale multiplier).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medgrain.models.heads import create_head
from medgrain.models.image import ImageTower
from medgrain.models.text import TextTower, merge_wordpieces

MAX_LOGIT_SCALE = math.log(100.0)


class DualEncoder(nn.Module):
    def __init__(
        self,
        visual: ImageTower,
        text: TextTower,
        embed_dim: int,
        head: str = "linear",
        head_hidden: int = 2048,
        image_head: str | None = None,
        text_head: str | None = None,
        token_heads: bool = False,
        init_logit_scale: float = math.log(1 / 0.07),
        config: Any = None,
    ):
        """``init_logit_scale`` is the log of the initial multiplier, as in open_clip. ``image_head`` is the
        global image head's kind when it differs from ``head``, ``text_head`` the global text head's (the token
        heads always use ``head``: a tower with its own projection, open_clip's, keeps it as the global head
        while MGCA's token heads are fresh).
        ``config`` is the ModelConfig the model was built from (kept for save_pretrained)."""
        super().__init__()
        self.visual = visual
        self.text = text
        self.embed_dim = embed_dim
        self.image_proj = create_head(image_head or head, visual.width, embed_dim, head_hidden)
        self.text_proj = create_head(text_head or head, text.width, embed_dim, head_hidden)
        self.token_heads = token_heads
        if token_heads:
            self.image_token_proj = create_head(head, visual.token_width, embed_dim, head_hidden, tokens=True)
            # open_clip's text transformer pools a projected token: its tokens are narrower or wider than that
            self.text_token_proj = create_head(
                head, getattr(text, "token_width", text.width), embed_dim, head_hidden, tokens=True
            )
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.config = config

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in both towers (open_clip's ``CLIP.set_grad_checkpointing``): less
        memory for one more forward of each tower in backward."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def logit_scale_value(self) -> torch.Tensor:
        """The multiplier of the similarities: exp of the parameter clamped to [0, log 100]."""
        return self.logit_scale.clamp(0.0, MAX_LOGIT_SCALE).exp()

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.image_proj(self.visual(images).pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: Mapping[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        features = self.text_proj(self.text(text["input_ids"], text["attention_mask"]).pooled)
        return F.normalize(features, dim=-1) if normalize else features

    def _require_token_heads(self) -> None:
        if not self.token_heads:
            raise RuntimeError("token outputs need token heads: build the model with token_heads=True")

    def image_tokens(self, images: torch.Tensor) -> dict[str, Any]:
        """global (N,E), tokens (N,M,E), attention (N,M) [CLS] attention over tokens, grid (h,w); L2-normalised."""
        self._require_token_heads()
        out = self.visual(images, tokens=True)
        return {
            "global": F.normalize(self.image_proj(out.pooled), dim=-1),
            "tokens": F.normalize(self.image_token_proj(out.tokens), dim=-1),
            "attention": out.cls_attention,
            "grid": out.grid,
        }

    def text_tokens(self, text: Mapping[str, torch.Tensor], attention_off_by_one: bool = False) -> dict[str, torch.Tensor]:
        """global (N,E), words (N,W,E) merged from word pieces with ``text["word_ids"]``, word_mask (N,W),
        attention (N,W) [CLS] attention summed over each word's pieces; L2-normalised, padded words are 0.

        ``attention_off_by_one`` reproduces MGCA's released code, which gives the piece at position j the
        [CLS] attention to position j + 1 (github.com/HKU-MedAI/MGCA, arXiv:2210.06044); off, each piece keeps
        its own."""
        self._require_token_heads()
        out = self.text(text["input_ids"], text["attention_mask"], tokens=True)
        piece_attention = out.cls_attention
        if attention_off_by_one:
            piece_attention = F.pad(piece_attention[:, 1:], (0, 1))
        words, attention, word_mask = merge_wordpieces(out.hidden, piece_attention, text["word_ids"])
        return {
            "global": F.normalize(self.text_proj(out.pooled), dim=-1),
            "words": F.normalize(self.text_token_proj(words, word_mask), dim=-1),
            "word_mask": word_mask,
            "attention": attention,
        }

    def patch_embeddings(self, images: torch.Tensor, level: str = "auto") -> tuple[torch.Tensor, tuple[int, int]]:
        """L2-normalised embeddings of every image location, (N, M, E), and their grid (h, w).

        ``level="token"``: the token head's patch embeddings (MGCA's local space, where words are aligned
        with patches); ``"global"``: the tower's dense features through the global image head, the space
        of ``encode_image`` (CLIP, MGLL); ``"auto"``: token when the model has token heads."""
        if level == "auto":
            level = "token" if self.token_heads else "global"
        if level == "token":
            out = self.image_tokens(images)
            if out["grid"] is None:
                raise RuntimeError("the image tower returned no patch grid (patch dropout?); maps need every patch")
            return out["tokens"], out["grid"]
        if level != "global":
            raise ValueError(f"level must be 'auto', 'token' or 'global', not {level!r}")
        dense, grid = self.visual.dense(images)
        n, m, _ = dense.shape
        return F.normalize(self.image_proj(dense.reshape(n * m, -1)).reshape(n, m, -1), dim=-1), grid

    def phrase_embeddings(self, text: Mapping[str, torch.Tensor], level: str = "auto") -> torch.Tensor:
        """L2-normalised phrase embeddings (N, E) in the space of ``patch_embeddings(level)``: the global text
        embedding, or for ``"token"`` the words' token embeddings averaged with their [CLS] attention (the
        weights MGCA's token alignment gives each word, Wang et al., NeurIPS 2022, arXiv:2210.06044)."""
        if level == "auto":
            level = "token" if self.token_heads else "global"
        if level == "global":
            return self.encode_text(text)
        if level != "token":
            raise ValueError(f"level must be 'auto', 'token' or 'global', not {level!r}")
        out = self.text_tokens(text)
        weights = out["attention"] * out["word_mask"]
        # a text whose [CLS] attends to none of its words gets its words' plain mean
        weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, out["word_mask"].to(weights.dtype))
        return F.normalize((weights.unsqueeze(-1) * out["words"]).sum(1), dim=-1)

    def forward(
        self, images: torch.Tensor, text: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(text), self.logit_scale_value()
