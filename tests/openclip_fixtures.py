"""Random-weight open_clip models of the published architectures, written as open_clip local directories.

Nothing is downloaded: a native CLIP ViT-B/16 comes from open_clip's built-in config, and a
BiomedCLIP-shaped model (timm ViT-B/16 + a Hugging Face BERT with [CLS] pooling and open_clip's MLP
projection, BiomedCLIP's open_clip_config.json) gets a small BERT config and MiniLM's tokenizer files
written locally. Small variants of both keep the wiring tests fast.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

BIOMEDCLIP_VISION = {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                     "timm_pool": "", "timm_proj": "linear", "image_size": 224}
# open_clip's TimmModel builds the timm trunk at its own default size (224), whatever image_size says
TINY_TIMM_VISION = {**BIOMEDCLIP_VISION, "timm_model_name": "vit_tiny_patch16_224"}
TINY_NATIVE = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
SMALL_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
              "max_position_embeddings": 128}
TEXTS = ["no acute cardiopulmonary process", "small left pleural effusion with adjacent atelectasis", "cardiomegaly"]


def write_bert_dir(directory: Path) -> Path:
    """A small random BERT's config with MiniLM's (uncased BERT) tokenizer files: a local hf_model_name."""
    from transformers import AutoTokenizer, BertConfig

    from medgrain.models.text import minilm_path

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    BertConfig(vocab_size=tokenizer.vocab_size, **SMALL_BERT).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_open_clip_dir(directory: Path, model_cfg: dict, seed: int = 0, bert_dir: Path | None = None) -> Path:
    """An open_clip local-dir (config, random weights, tokenizer files when the text tower is Hugging Face)."""
    import open_clip
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    model_cfg = json.loads(json.dumps(model_cfg))
    if bert_dir is not None:
        model_cfg["text_cfg"] = {"hf_model_name": str(bert_dir), "hf_tokenizer_name": str(bert_dir),
                                 "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                 "context_length": 64, **model_cfg.get("text_cfg", {})}
        for f in bert_dir.iterdir():
            if f.name != "config.json":
                shutil.copy(f, directory / f.name)
    (directory / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": model_cfg,
        "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
    }))
    torch.manual_seed(seed)
    clip = open_clip.create_model(f"local-dir:{directory}", pretrained_text=False)
    with torch.no_grad():
        clip.logit_scale.fill_(3.1)  # not open_clip's initial value: the import must carry it
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(directory / "open_clip_model.safetensors"))
    return directory


def biomedclip_cfg(vision: dict = BIOMEDCLIP_VISION, embed_dim: int = 512, text: dict | None = None) -> dict:
    return {"embed_dim": embed_dim, "vision_cfg": dict(vision), "text_cfg": dict(text or {})}


def assert_encoders_equal(model, tokenizer, clip, name: str, atol: float = 1e-5) -> None:
    """medgrain's ``model`` and ``tokenizer`` encode images and ``TEXTS`` as open_clip's ``clip`` (model
    ``name``, with open_clip's own tokenizer) does: the normalised embeddings agree to ``atol``."""
    import open_clip

    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_image(images), clip.encode_image(images, normalize=True),
                                   rtol=0, atol=atol)
        theirs = open_clip.get_tokenizer(name)(TEXTS)
        torch.testing.assert_close(model.encode_text(tokenizer(TEXTS)), clip.encode_text(theirs, normalize=True),
                                   rtol=0, atol=atol)
