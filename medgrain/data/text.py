"""Text side of the data: tokenization that keeps word ids, and stable ids of texts.

MGCA merges word pieces into words with the fast tokenizer's word ids; MGLL builds its soft targets
from which texts in a batch are equal, which ``text_id`` turns into integers that agree on every
rank and in every process without a shared vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

TOKENIZER_SETTINGS = "medgrain_tokenizer.json"


def text_id(text: str) -> int:
    """A stable 63-bit id of a text (exact string match; equal texts, equal ids)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def text_ids(texts: Sequence[str]) -> torch.Tensor:
    return torch.tensor([text_id(t) for t in texts], dtype=torch.long)


class Tokenizer:
    """Wraps a Hugging Face *fast* tokenizer: pads to the longest text, truncates at ``max_length`` and
    returns ``input_ids``, ``attention_mask`` and ``word_ids`` (-1 for special tokens and padding)."""

    def __init__(self, hf_tokenizer, max_length: int = 77):
        if not getattr(hf_tokenizer, "is_fast", False):
            raise TypeError(
                f"{type(hf_tokenizer).__name__} is not a fast tokenizer; word ids (needed to merge word "
                "pieces for MGCA) come only from Hugging Face fast tokenizers"
            )
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.hf = hf_tokenizer
        self.max_length = int(max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("cannot tokenize an empty list of texts")
        enc = self.hf(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        word_ids = torch.tensor(
            [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))], dtype=torch.long
        )
        return {
            "input_ids": enc["input_ids"].long(),
            "attention_mask": enc["attention_mask"].long(),
            "word_ids": word_ids,
        }

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(directory)
        (directory / TOKENIZER_SETTINGS).write_text(json.dumps({"max_length": self.max_length}))

    @classmethod
    def load(cls, directory: str | Path, max_length: int | None = None) -> Tokenizer:
        """Load from a local directory (a saved Tokenizer or any Hugging Face tokenizer folder)."""
        from transformers import AutoTokenizer

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {directory}")
        settings = directory / TOKENIZER_SETTINGS
        saved = json.loads(settings.read_text()) if settings.is_file() else {}
        hf = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
        return cls(hf, max_length or saved.get("max_length", 77))
