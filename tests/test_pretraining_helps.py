"""Issue #5's acceptance check: a tiny CLIP model pretrained for a few minutes on the synthetic chest
data beats the random-initialised baseline in zero-shot AUROC, linear-probe AUROC at 10% of the labels
and segmentation Dice at 10% of the labels, under the full demo's budget for CLIP (the README's table).
Deterministic on CPU (fixed seeds), so not a flaky test. The budget is the 6-epoch one this claim was
verified at, not the demo's current one: at 3 epochs (the demo's budget since it must fit in 15 minutes)
zero-shot and the linear probe still win but segmentation at 10% does not (README), and with 800 images
and 5 epochs segmentation at 10% (one seed) did not either: 0.241 vs 0.266."""

import pytest

from medgrain.evaluation import linear_probe, segment, zero_shot
from medgrain.training.config import load_config
from medgrain.training.loop import train


@pytest.mark.slow
def test_tiny_clip_beats_random_downstream(tmp_path):
    from dataclasses import replace

    from medgrain.data.synthetic import generate
    from medgrain.demo import FULL

    budget = replace(FULL, epochs=6)

    manifest = generate("cxr", tmp_path / "data", n=FULL.n, seed=0, size=FULL.size, workers=2, progress=False)
    cfg = load_config("tiny-clip", [f"data.manifest={manifest}", "data.synthetic=null",
                                    f"train.output_dir={tmp_path / 'clip'}", f"train.epochs={budget.epochs}",
                                    f"train.batch_size={FULL.batch_size}", f"optim.lr={FULL.lr}",
                                    "train.progress=false", "train.tensorboard=false"])
    checkpoint = str(train(cfg).best_checkpoint)
    cache = tmp_path / "cache"

    def scores(ckpt: str) -> tuple[float, float, float]:
        zs = zero_shot(ckpt, manifest, model="tiny", cache_dir=cache)["metrics"]["macro"]["auroc"]
        lp = linear_probe(ckpt, manifest, model="tiny", fractions=(0.1,), seeds=(0, 1, 2), cache_dir=cache)
        seg = segment(ckpt, manifest, model="tiny", fractions=(0.1,), seeds=(0,), epochs=FULL.eval_epochs,
                      patience=FULL.eval_epochs)
        return (zs, lp["metrics"]["fractions"]["10%"]["macro"]["auroc"]["mean"],
                seg["metrics"]["fractions"]["10%"]["macro"]["dice"]["mean"])

    pretrained, random = scores(checkpoint), scores("random")
    for name, p, r in zip(("zero-shot AUROC", "linear-probe AUROC 10%", "segmentation Dice 10%"), pretrained, random):
        assert p > r, f"{name}: pretrained {p:.3f} does not beat random {r:.3f}"
