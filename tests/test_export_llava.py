"""llava-vision: a medgrain tower (CLIP ViT and timm ViT) as LlavaForConditionalGeneration's vision_tower. LLaVA
with a tiny random language model generates from an image and a prompt, and the patch features its projector
receives equal medgrain's hidden states of the chosen layer."""

from __future__ import annotations

import pytest
import torch
from test_export_hf import OPEN_CLIP_VIT
from test_export_open_clip import TINY_TEXT, _checkpoint

from medgrain.export import export
from medgrain.export.llava import vision_hidden_states
from medgrain.export.openclip import NotExpressibleError
from medgrain.models import load_pretrained

TOWERS = {
    "clip-vit": {"image": OPEN_CLIP_VIT, "text": TINY_TEXT, "embed_dim": 32, "image_head": "identity"},
    "timm-vit": {"image": {"source": "timm", "name": "vit_tiny_patch16_224", "image_size": 32,
                           "kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 3, "num_heads": 3}},
                 "text": TINY_TEXT, "embed_dim": 32},
    "tiny-vit preset": "tiny-vit",
}
IMAGE_TOKEN = 90


def _llava(folder, layer):
    from transformers import AutoConfig, AutoModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    config = LlavaConfig(vision_config=AutoConfig.from_pretrained(folder), text_config=text,
                         image_token_id=IMAGE_TOKEN, vision_feature_layer=layer,
                         vision_feature_select_strategy="default")
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(config).eval()
    llava.model.vision_tower = AutoModel.from_pretrained(folder).eval()  # the exported tower, as users swap it in
    return llava


@pytest.mark.parametrize("name", list(TOWERS))
@pytest.mark.parametrize("layer", [-2, -1])
def test_llava_generates_and_its_projector_sees_medgrains_features(name, layer, tmp_path):
    checkpoint = _checkpoint(tmp_path, TOWERS[name])
    folder = export(checkpoint, "llava-vision", tmp_path / "tower")
    ours = load_pretrained(checkpoint)
    llava = _llava(folder, layer)
    size = ours.config.image.image_size
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    patches = (size // 8) ** 2
    prompt = torch.tensor([[1, *([IMAGE_TOKEN] * patches), 5, 6, 7]])
    seen = []
    handle = llava.model.multi_modal_projector.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        generated = llava.generate(input_ids=prompt, pixel_values=pixels, max_new_tokens=3, do_sample=False)
    handle.remove()
    assert generated.shape == (1, prompt.shape[1] + 3)
    expected = vision_hidden_states(ours.model.visual, pixels)[layer][:, 1:]  # "default": [CLS] dropped
    assert seen[0].shape == (1, patches, expected.shape[-1])
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=1e-5)


def test_a_cnn_tower_is_refused(tmp_path):
    checkpoint = _checkpoint(tmp_path, {"image": {"source": "timm", "name": "resnet18", "image_size": 64},
                                        "text": TINY_TEXT, "embed_dim": 32})
    with pytest.raises(NotExpressibleError, match="LLaVA's vision tower is a ViT"):
        export(checkpoint, "llava-vision", tmp_path / "tower")


def test_hidden_states_follow_transformers_numbering(tmp_path):
    """[0] is the first block's input, [-1] the last block's output: the final norm of the pooled [CLS]
    follows it."""
    checkpoint = _checkpoint(tmp_path, TOWERS["timm-vit"])
    tower = load_pretrained(checkpoint).model.visual
    pixels = torch.randn(2, 3, 32, 32)
    states = vision_hidden_states(tower, pixels)
    assert len(states) == 1 + 3
    with torch.no_grad():
        torch.testing.assert_close(tower.trunk.norm(states[-1])[:, 0], tower(pixels).pooled)
