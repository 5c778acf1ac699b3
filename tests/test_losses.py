"""ClipLoss, cooccurrence_matrix and MGLLLoss against loop-based float64 references written from the
formulas (Python loops over i, j, g; no vectorised shortcut shared with the implementation)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from medgrain.losses import ClipLoss, MGLLLoss, cooccurrence_matrix

# ---------------------------------------------------------------------------------------------------
# References


def ref_cooccurrence(labels, mode="exact", other=None):
    rows = labels.tolist()
    cols = rows if other is None else other.tolist()
    out = [[0.0] * len(cols) for _ in rows]
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            if labels.dim() == 1:
                out[i][j] = 1.0 if a == b else 0.0
                continue
            set_a = {k for k, x in enumerate(a) if x}
            set_b = {k for k, x in enumerate(b) if x}
            if mode == "exact":
                out[i][j] = 1.0 if set_a == set_b else 0.0
            elif not set_a and not set_b:
                out[i][j] = 1.0
            else:
                out[i][j] = len(set_a & set_b) / len(set_a | set_b)
    return out


def ref_logits(image, text, scale):
    n = image.shape[0]
    return [[scale * float(image[i].double() @ text[j].double()) for j in range(n)] for i in range(n)]


def ref_log_softmax_row(values):
    top = max(values)
    lse = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - lse for v in values]


def ref_clip(image, text, scale):
    s = ref_logits(image, text, scale)
    n = len(s)
    i2t = -sum(ref_log_softmax_row(s[i])[i] for i in range(n)) / n
    t2i = -sum(ref_log_softmax_row([s[i][j] for i in range(n)])[j] for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def ref_bce_with_logits(x, t):
    # log σ(x) written so that neither σ(x) nor 1 - σ(x) is formed (both underflow at |x| ~ 40);
    # log(1 - σ(x)) = log σ(x) - x.
    log_sig = -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))
    return -(t * log_sig + (1.0 - t) * (log_sig - x))


def ref_mgll(
    image, texts, labels, scale, alpha_clip=0.5, alpha_point=1.0, alpha_kl=1.0,
    cooccurrence="exact", point_target="cooccurrence", granularity_reduction="mean",
):
    n, num_g = image.shape[0], len(texts)
    parts, clips, points, probs = {}, [], [], []
    for g in range(num_g):
        s = ref_logits(image, texts[g], scale)
        c = ref_cooccurrence(labels[g], cooccurrence)
        w = [[c[i][j] / sum(c[i]) for j in range(n)] for i in range(n)]
        i2t = 0.0
        for i in range(n):
            log_p = ref_log_softmax_row(s[i])
            i2t -= sum(w[i][j] * log_p[j] for j in range(n))
        t2i = 0.0
        for j in range(n):
            log_p = ref_log_softmax_row([s[i][j] for i in range(n)])
            t2i -= sum(w[j][i] * log_p[i] for i in range(n))
        clip_g = 0.5 * (i2t / n + t2i / n)
        target = c if point_target == "cooccurrence" else w
        point_g = sum(ref_bce_with_logits(s[i][j], target[i][j]) for i in range(n) for j in range(n)) / n**2
        parts[f"clip_{g}"], parts[f"point_{g}"] = clip_g, point_g
        clips.append(clip_g)
        points.append(point_g)
        probs.append([[math.exp(v) for v in ref_log_softmax_row(s[i])] for i in range(n)])
    kl = 0.0
    for i in range(n):
        for g in range(num_g):
            for j in range(n):
                m = sum(probs[h][i][j] for h in range(num_g)) / num_g
                p = probs[g][i][j]
                kl += p * math.log(p / m)
    kl /= n
    reduce = (lambda xs: sum(xs) / len(xs)) if granularity_reduction == "mean" else sum
    clip, point = reduce(clips), reduce(points)
    loss = alpha_clip * clip + alpha_point * point + alpha_kl * kl
    return {"loss": loss, "clip": clip, "point": point, "kl": kl, **parts}


# ---------------------------------------------------------------------------------------------------
# Hand-made batches: duplicated labels, and for multi-hot identical and empty rows.

N, D = 6, 5
IDS = [
    torch.tensor([3, 3, 7, 1, 7, 3]),
    torch.tensor([0, 0, 0, 1, 1, 2]),
    torch.tensor([9, 8, 7, 6, 5, 4]),  # all distinct: W = I
]
MULTI_HOT = [
    torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool),
    torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool),
    torch.tensor([[0, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool),
]


def features(seed, n=N, d=D, g=3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1).to(dtype)
    texts = [F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1).to(dtype) for _ in range(g)]
    return image, texts


def assert_matches(out, ref, atol=1e-5):
    assert set(out) == set(ref)
    for k, v in ref.items():
        assert out[k].dtype == torch.float32
        assert out[k].shape == ()
        assert math.isclose(out[k].item(), v, rel_tol=1e-5, abs_tol=atol), (k, out[k].item(), v)


# ---------------------------------------------------------------------------------------------------
# cooccurrence_matrix


@pytest.mark.parametrize("g", range(3))
def test_cooccurrence_exact_ids(g):
    c = cooccurrence_matrix(IDS[g])
    assert c.dtype == torch.float32 and c.shape == (N, N)
    assert c.tolist() == ref_cooccurrence(IDS[g])


@pytest.mark.parametrize("mode", ["exact", "jaccard"])
@pytest.mark.parametrize("g", range(3))
@pytest.mark.parametrize("as_float", [False, True])
def test_cooccurrence_multi_hot(mode, g, as_float):
    labels = MULTI_HOT[g].float() if as_float else MULTI_HOT[g]
    c = cooccurrence_matrix(labels, mode)
    assert c.dtype == torch.float32 and c.shape == (N, N)
    torch.testing.assert_close(c, torch.tensor(ref_cooccurrence(MULTI_HOT[g], mode), dtype=torch.float32))
    assert torch.all(c.diagonal() == 1)


def test_cooccurrence_jaccard_values_and_empty_rows():
    labels = MULTI_HOT[0]  # rows 2 and 4 are empty
    c = cooccurrence_matrix(labels, "jaccard")
    assert c[2, 4] == 1 and c[4, 2] == 1 and c[2, 2] == 1  # two empty rows agree exactly
    assert c[2, 0] == 0  # empty vs non-empty
    assert c[0, 3].item() == pytest.approx(1 / 3)  # {0,2} vs {0,1}
    assert c[3, 5].item() == pytest.approx(1 / 4)  # {0,1} vs {1,2,3}


@pytest.mark.parametrize("mode", ["exact", "jaccard"])
def test_cooccurrence_other_gives_columns(mode):
    rows, cols = MULTI_HOT[1][:2], MULTI_HOT[1]
    c = cooccurrence_matrix(rows, mode, other=cols)
    assert c.shape == (2, N)
    torch.testing.assert_close(c, torch.tensor(ref_cooccurrence(rows, mode, cols), dtype=torch.float32))
    c_ids = cooccurrence_matrix(IDS[0][3:], other=IDS[0])
    assert c_ids.tolist() == ref_cooccurrence(IDS[0][3:], other=IDS[0])


def test_soft_targets_symmetric_for_exact_labels():
    for labels in [*IDS, *MULTI_HOT]:
        c = cooccurrence_matrix(labels)
        w = c / c.sum(1, keepdim=True)
        torch.testing.assert_close(w, w.T)


# ---------------------------------------------------------------------------------------------------
# ClipLoss


def test_clip_loss_matches_reference():
    image, texts = features(0)
    out = ClipLoss()(image, texts[0], 14.0)
    assert set(out) == {"loss"}
    assert out["loss"].item() == pytest.approx(ref_clip(image, texts[0], 14.0), rel=1e-5)


def test_clip_loss_equals_mgll_clip_part_for_distinct_labels():
    image, texts = features(1)
    clip = ClipLoss()(image, texts[0], 20.0)["loss"]
    mgll = MGLLLoss()(image, texts[:1], [IDS[2]], 20.0)
    torch.testing.assert_close(mgll["clip"], clip)
    torch.testing.assert_close(mgll["clip_0"], clip)
    assert mgll["kl"].item() == 0.0


# ---------------------------------------------------------------------------------------------------
# MGLLLoss against the reference

LABEL_SETS = {
    "ids_exact": ("exact", IDS),
    "multi_hot_exact": ("exact", MULTI_HOT),
    "multi_hot_jaccard": ("jaccard", MULTI_HOT),
}


@pytest.mark.parametrize(
    "num_g, labels_name, point_target, reduction",
    list(itertools.product([1, 2, 3], LABEL_SETS, ["cooccurrence", "soft"], ["mean", "sum"])),
)
def test_mgll_matches_reference(num_g, labels_name, point_target, reduction):
    mode, label_set = LABEL_SETS[labels_name]
    image, texts = features(num_g, g=num_g)
    labels = label_set[:num_g]
    kwargs = dict(
        alpha_clip=0.7, alpha_point=1.3, alpha_kl=0.4,
        cooccurrence=mode, point_target=point_target, granularity_reduction=reduction,
    )
    out = MGLLLoss(**kwargs)(image, texts, labels, 12.5)
    assert_matches(out, ref_mgll(image, texts, labels, 12.5, **kwargs))


def test_mgll_default_weights_are_the_papers():
    image, texts = features(7)
    out = MGLLLoss()(image, texts, IDS, 14.0)
    ref = ref_mgll(image, texts, IDS, 14.0, alpha_clip=0.5, alpha_point=1.0, alpha_kl=1.0)
    assert_matches(out, ref)


def test_point_target_soft_differs_from_binary_when_labels_repeat():
    image, texts = features(3)
    hard = MGLLLoss(point_target="cooccurrence")(image, texts, IDS, 10.0)
    soft = MGLLLoss(point_target="soft")(image, texts, IDS, 10.0)
    assert not torch.isclose(hard["point_0"], soft["point_0"])  # granularity 0 has repeated labels
    torch.testing.assert_close(hard["point_2"], soft["point_2"])  # all distinct: W = C = I
    torch.testing.assert_close(hard["clip"], soft["clip"])


def test_sum_reduction_is_granularities_times_mean():
    image, texts = features(4)
    mean = MGLLLoss(granularity_reduction="mean")(image, texts, IDS, 10.0)
    total = MGLLLoss(granularity_reduction="sum")(image, texts, IDS, 10.0)
    for k in ("clip", "point"):
        torch.testing.assert_close(total[k], 3 * mean[k])
    torch.testing.assert_close(total["kl"], mean["kl"])  # the KL is a sum over g in both


def test_kl_zero_when_granularities_agree():
    image, texts = features(5, g=1)
    same = [texts[0], texts[0].clone(), texts[0].clone()]
    out = MGLLLoss()(image, same, IDS, 30.0)  # labels may differ: the KL compares predictions only
    assert abs(out["kl"].item()) < 1e-6
    other = MGLLLoss()(image, [texts[0], features(6, g=1)[1][0]], IDS[:2], 30.0)
    assert other["kl"].item() > 1e-3


def test_finite_with_large_scale_and_negative_logits():
    image, _ = features(8, g=1)
    # Every pair anti-aligned or nearly so: logits down to -100, sigmoids and softmaxes underflow.
    texts = [-image, -image.roll(1, dims=0), -(image + 1e-3).flip(0)]
    image = image.clone().requires_grad_(True)
    out = MGLLLoss()(image, texts, IDS, 100.0)
    for k, v in out.items():
        assert torch.isfinite(v), k
    out["loss"].backward()
    assert torch.isfinite(image.grad).all()
    assert_matches(out, ref_mgll(image.detach(), texts, IDS, 100.0), atol=1e-4)
    clip = ClipLoss()(image, texts[0], 100.0)["loss"]
    assert torch.isfinite(clip)


def test_non_finite_is_returned_not_skipped():
    image, texts = features(9)
    texts[1] = texts[1].clone()
    texts[1][0, 0] = float("nan")
    out = MGLLLoss()(image, texts, IDS, 10.0)
    assert torch.isnan(out["loss"]) and torch.isnan(out["kl"]) and torch.isnan(out["clip_1"])
    assert torch.isfinite(out["clip_0"])
    image_inf = image.clone()
    image_inf[2, 1] = float("inf")
    assert not torch.isfinite(ClipLoss()(image_inf, texts[0], 10.0)["loss"])


def test_gradcheck_float64():
    image, texts = features(10, n=4, d=3, g=2, dtype=torch.float64)
    labels = [torch.tensor([0, 0, 1, 2]), torch.tensor([[1, 0], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)]
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    inputs = (image.requires_grad_(True), texts[0].requires_grad_(True), texts[1].requires_grad_(True), scale)
    for loss in (MGLLLoss(), MGLLLoss(cooccurrence="jaccard", point_target="soft", granularity_reduction="sum")):
        if loss.cooccurrence == "jaccard":
            labels = [labels[1], labels[1].flip(0)]

        def fn(v, u0, u1, s, loss=loss, labels=labels):
            out = loss(v, [u0, u1], labels, s)
            assert out["loss"].dtype == torch.float64
            return out["loss"]

        assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(lambda v, u, s: ClipLoss()(v, u, s)["loss"], inputs[:2] + (scale,))


def test_bf16_inputs_give_float32_loss():
    image, texts = features(11)
    ref = MGLLLoss()(image, texts, IDS, 14.0)
    out = MGLLLoss()(image.bfloat16(), [t.bfloat16() for t in texts], IDS, torch.tensor(14.0, dtype=torch.bfloat16))
    for k, v in out.items():
        assert v.dtype == torch.float32, k
    torch.testing.assert_close(out["loss"], ref["loss"], atol=0.05, rtol=0.02)
    assert ClipLoss()(image.bfloat16(), texts[0].bfloat16(), 14.0)["loss"].dtype == torch.float32
    # Under autocast the loss is still computed in float32: the same numbers as without it.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = MGLLLoss()(image, texts, IDS, 14.0)
        auto_clip = ClipLoss()(image, texts[0], 14.0)["loss"]
    for k, v in ref.items():
        assert auto[k].dtype == torch.float32
        torch.testing.assert_close(auto[k], v)
    torch.testing.assert_close(auto_clip, ClipLoss()(image, texts[0], 14.0)["loss"])


def test_learnable_logit_scale_gets_gradient():
    image, texts = features(12)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    MGLLLoss()(image, texts, IDS, log_scale.exp())["loss"].backward()
    assert log_scale.grad is not None and torch.isfinite(log_scale.grad) and log_scale.grad != 0


# ---------------------------------------------------------------------------------------------------
# Bad inputs: every one raises with a message that names the problem.

IMAGE, TEXTS = features(13)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"cooccurrence": "cosine"}, ValueError, r"unknown cooccurrence 'cosine'"),
        ({"point_target": "hard"}, ValueError, r"unknown point_target 'hard'"),
        ({"granularity_reduction": "max"}, ValueError, r"unknown granularity_reduction 'max'"),
        ({"alpha_clip": -1.0}, ValueError, r"alpha_clip must be a finite number >= 0"),
        ({"alpha_kl": float("nan")}, ValueError, r"alpha_kl must be a finite number >= 0"),
        ({"alpha_point": "1"}, ValueError, r"alpha_point must be a finite number >= 0"),
    ],
)
def test_bad_configuration(kwargs, error, message):
    with pytest.raises(error, match=message):
        MGLLLoss(**kwargs)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: MGLLLoss()(IMAGE, TEXTS[0], IDS[0], 10.0), TypeError, r"text_features must be a list or tuple.*pass \[text_features\]"),
        (lambda: MGLLLoss()(IMAGE, TEXTS, {"a": IDS[0]}, 10.0), TypeError, r"labels must be a list or tuple .* got dict"),
        (lambda: MGLLLoss()(IMAGE, [], [], 10.0), ValueError, r"at least one granularity"),
        (lambda: MGLLLoss()(IMAGE, TEXTS, IDS[:2], 10.0), ValueError, r"got 3 text feature tensors but 2 label tensors"),
        (lambda: MGLLLoss()(IMAGE, [TEXTS[0], TEXTS[1][:, :3]], IDS[:2], 10.0), ValueError, r"text_features\[1\] has shape \(6, 3\) but image_features has shape \(6, 5\)"),
        (lambda: MGLLLoss()(IMAGE[None], TEXTS, IDS, 10.0), ValueError, r"image_features must be a 2-D tensor \(N, D\)"),
        (lambda: MGLLLoss()(IMAGE, [TEXTS[0][0]], IDS[:1], 10.0), ValueError, r"text_features\[0\] must be a 2-D tensor"),
        (lambda: MGLLLoss()(IMAGE, TEXTS[:1], [IDS[0][:5]], 10.0), ValueError, r"labels\[0\] has 5 rows but the batch has N=6"),
        (lambda: MGLLLoss()(IMAGE, TEXTS[:1], [IDS[0].float()], 10.0), TypeError, r"labels\[0\] of shape \(N,\) are class ids and must be an integer tensor"),
        (lambda: MGLLLoss()(IMAGE, TEXTS[:1], [MULTI_HOT[0].long()], 10.0), TypeError, r"labels\[0\] of shape \(N, C\) are multi-hot and must be bool or float"),
        (lambda: MGLLLoss()(IMAGE, TEXTS[:1], [MULTI_HOT[0][None]], 10.0), ValueError, r"labels\[0\] must be class ids \(N,\) or multi-hot \(N, C\)"),
        (lambda: MGLLLoss()(IMAGE, TEXTS[:1], [MULTI_HOT[0].float() * 0.5], 10.0), ValueError, r"labels\[0\] are multi-hot and every entry must be 0 or 1"),
        (lambda: MGLLLoss(cooccurrence="jaccard")(IMAGE, TEXTS[:1], IDS[:1], 10.0), ValueError, r"cooccurrence='jaccard' needs multi-hot labels"),
        (lambda: MGLLLoss()(IMAGE, TEXTS, IDS, torch.ones(2)), ValueError, r"logit_scale must be a scalar"),
        (lambda: MGLLLoss()(IMAGE, TEXTS, IDS, "10"), TypeError, r"logit_scale must be a float or a scalar tensor"),
        (lambda: MGLLLoss()(IMAGE.long(), [t.long() for t in TEXTS], IDS, 10.0), TypeError, r"image_features must be a floating-point tensor"),
        (lambda: MGLLLoss()(IMAGE[:0], [t[:0] for t in TEXTS], [i[:0] for i in IDS], 10.0), ValueError, r"empty batch"),
        (lambda: ClipLoss()(IMAGE, TEXTS[0][:4], 10.0), ValueError, r"text_features has shape \(4, 5\) but image_features has shape \(6, 5\)"),
        (lambda: ClipLoss()(IMAGE, TEXTS[0], torch.ones(1, 2)), ValueError, r"logit_scale must be a scalar"),
        (lambda: cooccurrence_matrix(IDS[0], "cosine"), ValueError, r"unknown co-occurrence mode 'cosine'"),
        (lambda: cooccurrence_matrix(IDS[0], "jaccard"), ValueError, r"jaccard co-occurrence needs multi-hot labels"),
        (lambda: cooccurrence_matrix(IDS[0], other=MULTI_HOT[0]), ValueError, r"labels are ids but other is multi-hot"),
        (lambda: cooccurrence_matrix(MULTI_HOT[0], other=MULTI_HOT[0][:, :3]), ValueError, r"labels have 4 classes but other has 3"),
        (lambda: cooccurrence_matrix([1, 2, 3]), TypeError, r"labels must be a tensor, got list"),
    ],
)
def test_bad_inputs_raise_clearly(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_autocast_gives_float32():
    image, texts = features(14)
    for kwargs, labels in (({}, IDS), ({"cooccurrence": "jaccard"}, MULTI_HOT)):
        cpu = MGLLLoss(**kwargs)(image, texts, labels, 14.0)
        cuda_args = (image.cuda(), [t.cuda() for t in texts], [x.cuda() for x in labels], torch.tensor(14.0).cuda())
        gpu = MGLLLoss(**kwargs)(*cuda_args)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            auto = MGLLLoss(**kwargs)(*cuda_args)
        for k, v in cpu.items():
            torch.testing.assert_close(gpu[k].cpu(), v, atol=1e-5, rtol=1e-5)
            assert auto[k].dtype == torch.float32
            torch.testing.assert_close(auto[k].cpu(), v, atol=1e-5, rtol=1e-5)
    clip = ClipLoss()(image.cuda(), texts[0].cuda(), 14.0)["loss"]
    torch.testing.assert_close(clip.cpu(), ClipLoss()(image, texts[0], 14.0)["loss"], atol=1e-5, rtol=1e-5)


def test_one_precision_rule_for_every_loss():
    from medgrain.losses.precision import compute_dtype, full_precision

    half, double = torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float64)
    assert compute_dtype(half) == torch.float32 and compute_dtype(half, double) == torch.float64
    a = torch.randn(3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with full_precision(a.device):
            assert (a @ a).dtype == torch.float32
