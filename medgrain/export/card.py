"""The model card (README.md with YAML metadata) of an ``hf`` export, from the run's own records.

Training data and objective come from the checkpoint's ``run.yaml``; evaluation metrics from the result
JSON files medgrain's evaluation commands wrote next to the run (``--out``), if any. Nothing is invented:
a field the run does not record is said to be unknown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from medgrain.models.factory import ModelConfig

IMAGE_LOADERS = {
    "clip_vision": "from transformers import CLIPVisionModelWithProjection\n"
                   "image_model = CLIPVisionModelWithProjection.from_pretrained(\"DIR/image\").eval()\n"
                   "image_embedding = image_model(pixel_values=pixels).image_embeds",
    "timm_wrapper": "from transformers import AutoModelForImageClassification\n"
                    "image_model = AutoModelForImageClassification.from_pretrained(\"DIR/image\").eval()\n"
                    "image_embedding = image_model(pixel_values=pixels).logits  # the classifier head is the projection",
}
CLIP_TEXT_LOADER = """from transformers import AutoTokenizer, CLIPTextModelWithProjection
tokenizer = AutoTokenizer.from_pretrained("DIR/text")
text_model = CLIPTextModelWithProjection.from_pretrained("DIR/text").eval()
batch = tokenizer(texts, padding=True, truncation=True, max_length=text_model.config.max_position_embeddings,
                  return_tensors="pt")
text_embedding = text_model(**batch).text_embeds"""
TEXT_LOADER = """import json, torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("DIR/text")
text_model = AutoModel.from_pretrained("DIR/text", add_pooling_layer=False).eval()
head = json.load(open("DIR/text/projection.json"))       # pooling: cls | mean; projection: linear | gelu-mlp | identity
w = load_file("DIR/text/projection.safetensors")
batch = tokenizer(texts, padding=True, truncation=True, max_length=head["max_length"], return_tensors="pt")
hidden = text_model(**batch).last_hidden_state
mask = batch["attention_mask"].unsqueeze(-1).float()
pooled = hidden[:, 0] if head["pooling"] == "cls" else (hidden * mask).sum(1) / mask.sum(1)
if head["projection"] == "linear":
    text_embedding = pooled @ w["weight"].T
elif head["projection"] == "gelu-mlp":
    text_embedding = torch.nn.functional.gelu(pooled @ w["0.weight"].T) @ w["2.weight"].T
else:
    text_embedding = pooled"""


def _run_config(checkpoint: Path | None) -> dict[str, Any]:
    path = checkpoint / "run.yaml" if checkpoint else None
    return (yaml.safe_load(path.read_text()) or {}) if path and path.is_file() else {}


def _result_files(checkpoint: Path | None) -> list[Path]:
    """Evaluation results near the checkpoint: in it, in the run folder (runs/x/checkpoints/last -> runs/x)
    and one level below those."""
    if checkpoint is None:
        return []
    roots = {checkpoint, checkpoint.parent.parent}
    return sorted({p for r in roots for pattern in ("*.json", "*/*.json") for p in r.glob(pattern)})


def _scalar(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        for key in ("value", "mean", "point"):
            if isinstance(value.get(key), (int, float)):
                return float(value[key])
    return None


def _results(checkpoint: Path | None) -> list[dict[str, Any]]:
    """model-index entries: one per result file, its macro (or top-level) scalar metrics."""
    entries = []
    for path in _result_files(checkpoint):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict) or "task" not in record or not isinstance(record.get("metrics"), dict):
            continue
        metrics = record["metrics"].get("macro", record["metrics"])
        values = [{"type": k, "name": k, "value": round(v, 6)} for k, raw in metrics.items()
                  if (v := _scalar(raw)) is not None]
        if values:
            data = Path(str(record.get("data", "unknown"))).name
            entries.append({"task": {"type": record["task"], "name": record["task"]},
                            "dataset": {"name": data, "type": data}, "metrics": values})
    return entries


def model_card(config: ModelConfig, image_kind: str, text_kind: str, checkpoint: Path | None) -> str:
    run = _run_config(checkpoint)
    objective = (run.get("objective") or {}).get("name", "unknown")
    data = run.get("data") or {}
    manifest = data.get("manifest") or data.get("shards") or "unknown"
    meta: dict[str, Any] = {
        "license": "other",  # the weights inherit the training data's and base models' terms: set it before sharing
        "library_name": "transformers",
        "tags": ["medgrain", "medical", "vision-language", "clip", f"objective-{objective}"],
        "pipeline_tag": "zero-shot-image-classification",
    }
    results = _results(checkpoint)
    if results:
        meta["model-index"] = [{"name": "medgrain-export", "results": results}]
    front = yaml.safe_dump(meta, sort_keys=False)
    loader = IMAGE_LOADERS[image_kind]
    return f"""---
{front}---

# medgrain dual encoder (Hugging Face export)

An image encoder and a text encoder trained with medgrain, aligned in one {config.embed_dim}-d embedding space
(cosine similarity times the logit scale in `medgrain_hf.json` gives CLIP-style logits).

## Training
- objective: `{objective}`
- training data: `{manifest}`
- image tower: `{config.image.source}:{config.image.name}` at {config.image.image_size} px
- text tower: `{config.text.name_or_path}`, {"open_clip's text transformer (end-of-text token)" if text_kind == "clip_text" else f"{config.text.pooling} pooling"}
- the full run configuration is the checkpoint's `run.yaml`{"" if run else " (not found next to the checkpoint)"}

## Evaluation
{_results_text(results)}

## License
Not set by medgrain (`license: other`): the weights carry the terms of the training data and of the base
models; set the license before sharing.

## How to load (transformers only)
Images: normalise with `image/preprocessor_config.json` (mean {list(config.preprocess.mean)}, std
{list(config.preprocess.std)}, {config.image.image_size} px: shorter side resized, centre crop).

```python
{loader}
```

Texts:

```python
{CLIP_TEXT_LOADER if text_kind == "clip_text" else TEXT_LOADER}
```

Normalise both embeddings (L2) before comparing them. With medgrain: `medgrain.load_pretrained("DIR")`.
MGCA's token heads, if the model had them, are not part of this export.
"""


def _results_text(results: list[dict[str, Any]]) -> str:
    if not results:
        return "No evaluation results were found next to the checkpoint."
    lines = ["| task | data | metric | value |", "|---|---|---|---|"]
    for entry in results:
        for m in entry["metrics"]:
            lines.append(f"| {entry['task']['name']} | {entry['dataset']['name']} | {m['name']} | {m['value']} |")
    return "\n".join(lines)
