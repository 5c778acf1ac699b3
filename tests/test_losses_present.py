"""Losses with absent texts (``present`` masks) against loop-based float64 references over the present
samples, written from issue 12's formulas with Python loops (no shared vectorised shortcut)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from test_losses import IDS, MULTI_HOT, N, features, ref_bce_with_logits, ref_cooccurrence, ref_logits

from medgrain.losses import ClipLoss, MGLLLoss


def ref_log_softmax(values):
    top = max(values)
    lse = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - lse for v in values]


def ref_clip_g(s, c, rows, point_target):
    """clip_g and point_g over the present samples ``rows`` (a list of indices)."""
    n = len(rows)
    w = {i: {j: c[i][j] / sum(c[i][k] for k in rows) for j in rows} for i in rows}
    i2t = t2i = 0.0
    for i in rows:
        log_p = dict(zip(rows, ref_log_softmax([s[i][j] for j in rows])))
        i2t -= sum(w[i][j] * log_p[j] for j in rows)
    for j in rows:
        log_p = dict(zip(rows, ref_log_softmax([s[i][j] for i in rows])))
        t2i -= sum(w[j][i] * log_p[i] for i in rows)
    target = c if point_target == "cooccurrence" else w
    point = sum(ref_bce_with_logits(s[i][j], target[i][j]) for i in rows for j in rows) / n**2
    return 0.5 * (i2t / n + t2i / n), point


def ref_kl(logits, present):
    taking_part = [g for g in range(len(logits)) if any(present[g])]
    n = len(present[0])
    common = [j for j in range(n) if all(present[g][j] for g in taking_part)]
    if len(taking_part) < 2 or not common:
        return 0.0
    kl = 0.0
    for i in range(n):  # every image row, present or not
        probs = {g: [math.exp(v) for v in ref_log_softmax([logits[g][i][j] for j in common])] for g in taking_part}
        for k in range(len(common)):
            m = sum(probs[g][k] for g in taking_part) / len(taking_part)
            kl += sum(probs[g][k] * math.log(probs[g][k] / m) for g in taking_part)
    return kl / n


def ref_mgll_present(image, texts, labels, scale, present, alpha_clip=0.5, alpha_point=1.0, alpha_kl=1.0,
                     cooccurrence="exact", point_target="cooccurrence", granularity_reduction="mean"):
    parts, clips, points, logits = {}, [], [], []
    for g in range(len(texts)):
        s = ref_logits(image, texts[g], scale)
        logits.append(s)
        rows = [i for i in range(len(s)) if present[g][i]]
        if not rows:
            parts[f"clip_{g}"] = parts[f"point_{g}"] = 0.0
            continue
        clip_g, point_g = ref_clip_g(s, ref_cooccurrence(labels[g], cooccurrence), rows, point_target)
        parts[f"clip_{g}"], parts[f"point_{g}"] = clip_g, point_g
        clips.append(clip_g)
        points.append(point_g)
    reduce = (lambda xs: sum(xs) / len(xs) if xs else 0.0) if granularity_reduction == "mean" else sum
    clip, point = reduce(clips), reduce(points)
    kl = ref_kl(logits, present)
    loss = alpha_clip * clip + alpha_point * point + alpha_kl * kl
    return {"loss": loss, "clip": clip, "point": point, "kl": kl, **parts}


def masks(*rows):
    return [torch.tensor(r, dtype=torch.bool) for r in rows]


# Each has absent texts at different samples; "empty" has a granularity with no present sample, "disjoint"
# no column present at every granularity, "one" a single sample at one granularity.
PRESENT = {
    "some": masks([1, 0, 1, 1, 0, 1], [1, 1, 1, 0, 1, 1], [0, 1, 1, 1, 1, 0]),
    "empty": masks([1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 0, 1, 1, 1]),
    "disjoint": masks([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]),
    "one": masks([0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0]),
}
LABEL_SETS = {"ids_exact": ("exact", IDS), "multi_hot_exact": ("exact", MULTI_HOT), "multi_hot_jaccard": ("jaccard", MULTI_HOT)}


def assert_close_to(out, ref):
    assert set(out) == set(ref)
    for k, v in ref.items():
        assert torch.isfinite(out[k]), k
        assert math.isclose(out[k].item(), v, rel_tol=1e-5, abs_tol=1e-5), (k, out[k].item(), v)


def spoil_absent(texts, labels, present, seed=5):
    """Random finite features and labels in absent rows: the loss must not see them."""
    gen = torch.Generator().manual_seed(seed)
    texts = [torch.where(p[:, None], t, torch.randn(t.shape, generator=gen)) for t, p in zip(texts, present)]
    spoiled = []
    for lab, p in zip(labels, present):
        noise = torch.randint(0, 2, lab.shape, generator=gen).to(lab.dtype)
        spoiled.append(torch.where(p.view(-1, *[1] * (lab.dim() - 1)), lab, noise))
    return texts, spoiled


@pytest.mark.parametrize(
    "present_name, labels_name, point_target, reduction",
    list(itertools.product(PRESENT, LABEL_SETS, ["cooccurrence", "soft"], ["mean", "sum"])),
)
def test_mgll_present_matches_reference(present_name, labels_name, point_target, reduction):
    mode, labels = LABEL_SETS[labels_name]
    present = PRESENT[present_name]
    image, texts = features(3)
    kwargs = dict(alpha_clip=0.7, alpha_point=1.3, alpha_kl=0.4, cooccurrence=mode, point_target=point_target,
                  granularity_reduction=reduction)
    ref = ref_mgll_present(image, texts, labels, 12.5, present, **kwargs)
    texts, spoiled = spoil_absent(texts, labels, present)
    assert_close_to(MGLLLoss(**kwargs)(image, texts, spoiled, 12.5, present=present), ref)


def test_reference_with_everything_present_is_the_unmasked_loss():
    from test_losses import ref_mgll

    image, texts = features(4)
    everything = masks(*[[1] * N] * 3)
    ref = ref_mgll_present(image, texts, IDS, 9.0, everything)
    for k, v in ref_mgll(image, texts, IDS, 9.0).items():
        assert math.isclose(ref[k], v, rel_tol=1e-12, abs_tol=1e-12), k


@pytest.mark.parametrize("kwargs", [{}, {"cooccurrence": "jaccard", "point_target": "soft", "granularity_reduction": "sum"}])
def test_all_present_equals_unmasked(kwargs):
    image, texts = features(6)
    labels = MULTI_HOT if kwargs else IDS
    loss = MGLLLoss(**kwargs)
    unmasked = loss(image, texts, labels, 11.0)
    masked = loss(image, texts, labels, 11.0, present=masks(*[[1] * N] * 3))
    for k, v in unmasked.items():
        torch.testing.assert_close(masked[k], v, rtol=1e-6, atol=1e-7, msg=k)


def test_no_present_text_anywhere_gives_zero_not_nan():
    image, texts = features(7)
    image.requires_grad_(True)
    out = MGLLLoss()(image, texts, IDS, 10.0, present=masks(*[[0] * N] * 3))
    assert all(v.item() == 0.0 for v in out.values())
    out["loss"].backward()
    assert torch.equal(image.grad, torch.zeros_like(image))


def test_gradients_match_reference_with_absent_texts():
    """Gradients of the masked loss equal those of the loss on the present sub-batch (one granularity,
    where the restriction is an index), and absent rows receive exactly zero gradient."""
    image, texts = features(8, g=1, dtype=torch.float64)
    present = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    text = texts[0].clone().requires_grad_(True)
    img = image.clone().requires_grad_(True)
    MGLLLoss()(img, [text], [IDS[0]], 7.0, present=[present])["loss"].backward()
    sub_text = texts[0][present].clone().requires_grad_(True)
    sub_img = image[present].clone().requires_grad_(True)
    MGLLLoss()(sub_img, [sub_text], [IDS[0][present]], 7.0)["loss"].backward()
    torch.testing.assert_close(text.grad[present], sub_text.grad)
    torch.testing.assert_close(img.grad[present], sub_img.grad)
    assert torch.equal(text.grad[~present], torch.zeros_like(text.grad[~present]))
    assert torch.equal(img.grad[~present], torch.zeros_like(img.grad[~present]))  # G = 1: no KL on them


def test_gradcheck_float64_with_absent_texts():
    image, texts = features(9, n=5, d=3, g=3, dtype=torch.float64)
    labels = [torch.tensor([0, 0, 1, 2, 1]), torch.tensor([3, 3, 3, 1, 1]), torch.tensor([0, 1, 2, 3, 4])]
    present = masks([1, 0, 1, 1, 1], [0, 0, 0, 0, 0], [1, 1, 0, 1, 1])
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    inputs = (image.requires_grad_(True), *[t.requires_grad_(True) for t in texts], scale)

    def fn(v, u0, u1, u2, s):
        return MGLLLoss(alpha_kl=0.7)(v, [u0, u1, u2], labels, s, present=present)["loss"]

    assert torch.autograd.gradcheck(fn, inputs)


def test_clip_loss_present_is_clip_on_the_sub_batch():
    image, texts = features(10, dtype=torch.float64)
    present = torch.tensor([0, 1, 1, 0, 1, 1], dtype=torch.bool)
    img, txt = image.clone().requires_grad_(True), texts[0].clone().requires_grad_(True)
    out = ClipLoss()(img, txt, 8.0, present=present)["loss"]
    out.backward()
    sub_img, sub_txt = image[present].clone().requires_grad_(True), texts[0][present].clone().requires_grad_(True)
    ref = ClipLoss()(sub_img, sub_txt, 8.0)["loss"]
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(img.grad[present], sub_img.grad)
    torch.testing.assert_close(txt.grad[present], sub_txt.grad)
    assert torch.equal(txt.grad[~present], torch.zeros_like(txt.grad[~present]))
    none = ClipLoss()(img, txt, 8.0, present=torch.zeros(N, dtype=torch.bool))["loss"]
    assert none.item() == 0.0 and none.requires_grad


@pytest.mark.parametrize(
    "present, error, message",
    [
        ([torch.ones(N, dtype=torch.bool)] * 2, TypeError, "list of 3 bool tensors"),
        (torch.ones(N, dtype=torch.bool), TypeError, "list of 3 bool tensors"),
        ([torch.ones(N, dtype=torch.bool)] * 2 + [torch.ones(N)], TypeError, r"present\[2\] must be a 1-D bool"),
        ([torch.ones(N, dtype=torch.bool)] * 2 + [torch.ones(N + 1, dtype=torch.bool)], ValueError, r"present\[2\] has 7"),
    ],
)
def test_bad_present_raises_clearly(present, error, message):
    image, texts = features(11)
    with pytest.raises(error, match=message):
        MGLLLoss()(image, texts, IDS, 10.0, present=present)
