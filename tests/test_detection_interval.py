"""The detection mAP interval: COCO's matches once, re-weighted per resample, equal to torchmetrics'
COCO evaluation on the resampled image lists themselves."""

import numpy as np
import pytest
import torch

from medgrain.evaluation.bootstrap import Bootstrap, resample_indices
from medgrain.evaluation.metrics import detection_map, detection_map_interval

pytest.importorskip("pycocotools")


def _data(seed=0, n=12):
    g = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(n):
        k = int(g.integers(0, 3))
        xy = g.uniform(0, 40, (k, 2))
        boxes = np.concatenate([xy, xy + g.uniform(5, 20, (k, 2))], 1)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.zeros(k, dtype=torch.long)})
        m = int(g.integers(0, 4))
        near = boxes[g.integers(0, k, m)] + g.normal(0, 3, (m, 4)) if k else g.uniform(0, 50, (m, 4))
        near[:, 2:] = np.maximum(near[:, 2:], near[:, :2] + 1)
        predictions.append({"boxes": torch.tensor(near, dtype=torch.float32),
                            "scores": torch.tensor(g.uniform(0.05, 1, m), dtype=torch.float32),
                            "labels": torch.zeros(m, dtype=torch.long)})
    return predictions, targets


def test_point_value_and_interval_match_torchmetrics_on_resampled_lists():
    predictions, targets = _data()
    spec = Bootstrap(resamples=12, seed=3)
    point, interval = detection_map_interval(predictions, targets, spec)
    assert point == pytest.approx(detection_map(predictions, targets)["map_40_75"], abs=1e-6)
    reference = []
    for rows in np.concatenate(list(resample_indices(len(targets), 12, 3, None, chunk=20))):
        value = detection_map([predictions[r] for r in rows], [targets[r] for r in rows])["map_40_75"]
        if value is not None:
            reference.append(value)
    assert interval == pytest.approx(list(np.percentile(reference, [2.5, 97.5])), abs=1e-6)
