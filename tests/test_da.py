"""DA-WSOL: batched k-means, the assigner's anchors and sampling, MMD, DANN, universum, DALoss."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dawsol.config import DASettings
from dawsol.da import DALoss, kmeans3, linear_mk_mmd
from dawsol.da import tsa as tsa_module
from dawsol.da.dann import grl_coefficient, reverse_gradient
from dawsol.da.loss import qualifies, sample_sets
from dawsol.da.mmd import batched_linear_mk_mmd
from dawsol.da.tsa import TargetSampleAssigner
from dawsol.errors import DawsolError


def _da(**overrides) -> DASettings:
    base = DASettings(
        method="mmd",
        loss="mmd",
        lambda1=0.3,
        lambda2=2.0,
        grl_schedule="official",
        start_epoch=0,
        sample_num_source=4,
        sample_num_target=4,
        kmeans_max_iter=50,
        anchor_update="fake_target",
        use_tsa=True,
        use_ld=True,
        use_lu=True,
    )
    return replace(base, **overrides)


def _reference_lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float = 0.0):
    """Plain Lloyd on one image in float64 with direct distances and loops, stopping as scikit-learn
    does: labels repeat, or the centres move by at most tol * mean per-dimension variance; the
    labels returned are those of the final centres."""
    threshold = tol * x.var(0, unbiased=False).mean().item()

    def assign(c):
        return torch.stack([((x - cj) ** 2).sum(1) for cj in c], dim=1).argmin(1)

    previous = None
    for _ in range(max_iter):
        labels = assign(centers)
        updated = torch.stack(
            [x[labels == j].mean(0) if (labels == j).any() else centers[j] for j in range(len(centers))]
        )
        shift = ((updated - centers) ** 2).sum().item()
        centers = updated
        if (previous is not None and torch.equal(labels, previous)) or shift <= threshold:
            break
        previous = labels
    return assign(centers), centers


@pytest.mark.parametrize("chunk_bytes", [tsa_module.CPU_CHUNK_BYTES, 1])
def test_kmeans3_equals_plain_lloyd_from_the_same_init(monkeypatch, chunk_bytes):
    monkeypatch.setattr(tsa_module, "CPU_CHUNK_BYTES", chunk_bytes)  # 1: one image per chunk
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 200, 16, generator=gen, dtype=torch.float64)
    x[:, :70] += 1.0  # some structure, so the iterations do something
    init = x[:, [0, 100, 199]].clone() + 0.1 * torch.randn(6, 3, 16, generator=gen, dtype=torch.float64)
    for tol in (0.0, 1e-2):
        labels, centers = kmeans3(x, init, max_iter=100, tol=tol)
        assert labels.shape == (6, 200) and centers.shape == (6, 3, 16)
        for b in range(6):
            ref_labels, ref_centers = _reference_lloyd(x[b], init[b], 100, tol)
            assert torch.equal(labels[b], ref_labels)
            torch.testing.assert_close(centers[b], ref_centers)


def test_kmeans3_images_converging_at_different_iterations():
    """Easy images finish early and leave the work set; the slow ones go on; each equals its reference."""
    gen = torch.Generator().manual_seed(10)
    easy = torch.cat([torch.zeros(5, 40, 8), torch.ones(5, 40, 8), 2 * torch.ones(5, 40, 8)], 1)
    easy = easy + 0.01 * torch.randn(5, 120, 8, generator=gen, dtype=torch.float64).float()
    hard = torch.rand(3, 120, 8, generator=gen)
    x = torch.cat([easy[:2], hard[:1], easy[2:], hard[1:]])  # 8 images, mixed order
    init = torch.stack([x[:, 0], x[:, 50], x[:, 100]], dim=1) + 0.05
    labels, centers = kmeans3(x, init, max_iter=100)
    for b in range(8):
        ref_labels, ref_centers = _reference_lloyd(x[b].double(), init[b].double(), 100, 1e-4)
        assert torch.equal(labels[b], ref_labels)
        torch.testing.assert_close(centers[b], ref_centers.float())


def test_kmeans3_float32_matches_reference_and_respects_the_cap():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 150, 32, generator=gen).relu()
    init = torch.stack([torch.zeros(4, 32), x.mean(1), x[:, 5]], dim=1)
    labels, _ = kmeans3(x, init, max_iter=50)
    for b in range(4):
        assert torch.equal(labels[b], _reference_lloyd(x[b].double(), init[b].double(), 50, 1e-4)[0])
    one_step, _ = kmeans3(x, init, max_iter=1)
    for b in range(4):
        assert torch.equal(one_step[b], _reference_lloyd(x[b].double(), init[b].double(), 1)[0])


def test_kmeans3_agrees_with_the_official_per_image_sklearn_k_means():
    k_means = pytest.importorskip("sklearn.cluster").k_means
    gen = torch.Generator().manual_seed(9)
    centres = torch.randn(3, 24, generator=gen).relu() * torch.tensor([[0.2], [1.0], [2.0]])
    x = (centres[torch.randint(0, 3, (5, 300), generator=gen)] + 0.6 * torch.randn(5, 300, 24, generator=gen)).relu()
    init = torch.stack([torch.zeros(5, 24), x.mean(1), 0.5 * (centres[1] + centres[2]).expand(5, 24)], dim=1)
    labels, centers = kmeans3(x, init)
    for b in range(5):
        ref_centres, ref_labels, _ = k_means(x[b].numpy(), 3, init=init[b].double().numpy(), n_init=1, random_state=0)
        assert (labels[b].numpy() == ref_labels).mean() > 0.995
        torch.testing.assert_close(centers[b], torch.from_numpy(ref_centres).float(), atol=1e-3, rtol=1e-3)


def _spec_mmd(source: torch.Tensor, target: torch.Tensor) -> float:
    """docs/method.md section 1.5, term by term, in float64."""
    s, t = source.double(), target.double()
    n = len(s)
    pooled = torch.cat([s, t])
    m = len(pooled)
    sigma = sum(((pooled[i] - pooled[j]) ** 2).sum().item() for i in range(m) for j in range(m)) / (m * m - m)

    def k(a, c):
        d = ((a - c) ** 2).sum().item()
        return sum(math.exp(-d / (sigma * 2 ** (j - 2))) for j in range(5))

    total = 0.0
    for i in range(n):
        j = (i + 1) % n
        total += k(s[i], s[j]) + k(t[i], t[j]) - k(s[i], t[j]) - k(s[j], t[i])
    return total / n


def test_linear_mk_mmd_equals_the_spec_formula():
    gen = torch.Generator().manual_seed(2)
    source = torch.randn(32, 10, generator=gen)
    target = torch.randn(32, 10, generator=gen) * 1.5 + 0.7
    assert linear_mk_mmd(source, target).item() == pytest.approx(_spec_mmd(source, target), rel=1e-4, abs=1e-5)
    batch_s, batch_t = torch.randn(3, 8, 5, generator=gen), torch.randn(3, 8, 5, generator=gen) + 1
    batched = batched_linear_mk_mmd(batch_s, batch_t)
    for b in range(3):
        assert batched[b].item() == pytest.approx(_spec_mmd(batch_s[b], batch_t[b]), rel=1e-4, abs=1e-5)


def test_mmd_bandwidth_has_no_gradient_and_identical_sets_give_zero():
    source = torch.randn(6, 4, requires_grad=True)
    target = torch.randn(6, 4)
    linear_mk_mmd(source, target).backward()
    assert torch.isfinite(source.grad).all()
    same = torch.zeros(6, 4, requires_grad=True)
    value = linear_mk_mmd(same, torch.zeros(6, 4))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(same.grad).all()


def _clustered_pixels(universum: torch.Tensor, z: torch.Tensor, anchor: torch.Tensor, sizes=(10, 20, 30)):
    """Pixels near the three seeds: sizes[0] near M_0, sizes[1] near z, sizes[2] near M_y."""
    gen = torch.Generator().manual_seed(3)
    parts = [
        c + 0.01 * torch.randn(n, c.shape[0], generator=gen) for c, n in zip((universum, z, anchor), sizes, strict=True)
    ]
    return torch.cat(parts)


def test_assigner_order_semantics_and_running_mean_anchors():
    dim = 6
    assigner = TargetSampleAssigner(num_classes=3, feature_dim=dim, max_iter=50)
    z0, z1 = torch.full((dim,), 5.0), torch.full((dim,), 9.0)
    # first batch: class 2 unseen, so its anchor is z (the two seeds coincide); M_0 is 0
    pixels = torch.cat([torch.zeros(10, dim), z0 + 0.01 * torch.randn(30, dim)])
    assignment = assigner(pixels[None], z0[None], torch.tensor([2]))[0]
    assert (assignment[:10] == 0).all() and (assignment[10:] > 0).all()
    assert assigner.class_counts.tolist() == [0, 0, 2] and assigner.universum_count.item() == 1
    _, centers = kmeans3(pixels[None], torch.stack([torch.zeros(dim), z0, z0])[None], 50)
    fake_centre = centers[0, 1]
    torch.testing.assert_close(assigner.class_anchors[2], (z0 + fake_centre) / 2)  # z, then the fake-target centre
    torch.testing.assert_close(assigner.universum_anchor, torch.zeros(dim))  # replaced by the universum centre (0)
    # second batch: seeds M_0 = 0, z = z1, M_2 = anchor; three clear clusters
    anchor = assigner.class_anchors[2].clone()
    pixels = _clustered_pixels(torch.zeros(dim) + 0.5, z1, anchor)
    assignment = assigner(pixels[None], z1[None], torch.tensor([2]))[0]
    assert (assignment[:10] == 0).all() and (assignment[10:30] == 1).all() and (assignment[30:] == 2).all()
    torch.testing.assert_close(assigner.class_anchors[2], (2 * anchor + pixels[10:30].mean(0)) / 3)
    torch.testing.assert_close(assigner.universum_anchor, (0 + pixels[:10].mean(0)) / 2)
    # the paper-figure variant learns from the true-target centre
    figure = TargetSampleAssigner(3, dim, 50, anchor_update="true_target")
    figure.class_anchors[2], figure.class_counts[2] = anchor, 2
    figure(pixels[None], z1[None], torch.tensor([2]))
    torch.testing.assert_close(figure.class_anchors[2], (2 * anchor + pixels[30:].mean(0)) / 3)


def test_assigner_batch_update_equals_sequential_running_means():
    gen = torch.Generator().manual_seed(4)
    pixels = torch.rand(5, 40, 8, generator=gen)
    pooled = pixels.mean(1)
    labels = torch.tensor([1, 0, 1, 1, 0])
    batched = TargetSampleAssigner(3, 8, 50)
    batched.class_anchors[0], batched.class_counts[0] = torch.rand(8, generator=gen), 3  # class 0 seen, 1 unseen
    start_anchors, start_counts = batched.class_anchors.clone(), batched.class_counts.clone()
    batched(pixels, pooled, labels)
    # sequential reference with the batch-start anchors as k-means init
    anchors, counts = start_anchors.clone(), start_counts.clone().double()
    universum = torch.zeros(8)
    first = {1: 0, 0: 1}
    for b, y in enumerate(labels.tolist()):
        init_class = pooled[first[y]] if start_counts[y] == 0 else start_anchors[y]
        _, centers = kmeans3(pixels[b : b + 1], torch.stack([torch.zeros(8), pooled[b], init_class])[None], 50)
        if counts[y] == 0:
            anchors[y], counts[y] = pooled[b], 1
        counts[y] += 1
        anchors[y] = anchors[y] * (counts[y] - 1) / counts[y] + centers[0, 1] / counts[y]
        universum = universum * b / (b + 1) + centers[0, 0] / (b + 1)
    torch.testing.assert_close(batched.class_anchors, anchors.float())
    assert batched.class_counts.tolist() == [5, 4, 0]
    torch.testing.assert_close(batched.universum_anchor, universum)


def test_sampling_draws_distinct_members_and_applies_the_qualification_rule():
    gen = torch.Generator().manual_seed(5)
    pixels = torch.randn(3, 50, 4, generator=gen)
    pooled = torch.randn(3, 4, generator=gen)
    assignment = torch.zeros(3, 50, dtype=torch.int64)
    assignment[0, :10], assignment[0, 10:20] = 1, 2  # 10 fake, 10 true: qualifies for 8/8
    assignment[1, :6], assignment[1, 10:30] = 1, 2  # 6 fake < 7: does not
    assignment[2, :30], assignment[2, 30:37] = 1, 2  # 7 true < 8: does not
    sets = sample_sets(pixels.transpose(1, 2), pooled, assignment, 8, 8, torch.Generator().manual_seed(0))
    assert qualifies(assignment, 8, 8).tolist() == [True, False, False]
    assert sets.source.shape == (3, 8, 4) and sets.target.shape == (3, 8, 4)
    assert torch.equal(sets.source[:, 0], pooled)
    rows = {tuple(r.tolist()): i for i, r in enumerate(pixels[0])}
    fake_rows = [rows[tuple(r.tolist())] for r in sets.source[0, 1:]]
    true_rows = [rows[tuple(r.tolist())] for r in sets.target[0]]
    assert len(set(fake_rows)) == 7 and all(i < 10 for i in fake_rows)
    assert len(set(true_rows)) == 8 and all(10 <= i < 20 for i in true_rows)
    with pytest.raises(DawsolError, match="sample_num_target"):
        sample_sets(pixels.transpose(1, 2), pooled, assignment, 8, 51)


def _features(seed: int = 6, batch: int = 4, dim: int = 8, side: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, dim, side, side, generator=gen)
    x[:, :, :3] *= 0.05  # background rows
    x[:, :, 5:, 5:] += 2.0  # a discriminative part
    return x


def test_gradients_reach_the_backbone_through_the_sampled_pixels():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    images = torch.randn(4, 3, 8, 8)
    features = conv(images).relu()
    features.retain_grad()
    pooled = features.mean((2, 3)).detach().requires_grad_()  # a separate leaf: only the samples link to features
    loss = DALoss(_da(use_lu=False), num_classes=2, feature_dim=8)
    out = loss(features, pooled, torch.tensor([0, 1, 0, 1]), progress=0.5, generator=torch.Generator().manual_seed(0))
    assert out.num_qualified > 0 and out.loss_d.item() > 0
    out.loss_d.backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert pooled.grad.abs().sum() > 0
    touched = features.grad.abs().sum(1) > 0  # [B, h, w]
    # only sampled fake/true-target pixels get a gradient: at most 3 + 4 per qualifying image
    assert 0 < touched.sum() <= out.num_qualified * 7
    assert (out.assignment[touched] > 0).all()


def test_gradient_reversal_flips_the_sign_and_follows_the_schedule():
    x = torch.randn(5, 3, requires_grad=True)
    weights = torch.randn(5, 3)
    (reverse_gradient(x, 0.3) * weights).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * weights)
    assert grl_coefficient(0.0) == 0.0
    assert grl_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # about 0.46
    assert grl_coefficient(1.0, "paper") == pytest.approx(2 / (1 + math.exp(-10)) - 1)


def test_dann_discriminator_learns_while_features_get_reversed_gradients():
    gen = torch.Generator().manual_seed(8)
    source = torch.randn(3, 5, 8, generator=gen, requires_grad=True)
    target = torch.randn(3, 6, 8, generator=gen, requires_grad=True)
    weights = torch.tensor([1.0, 0.0, 1.0])
    dann = DALoss(_da(loss="dann", sample_num_source=5, sample_num_target=6), 2, 8)
    groups = dann.param_groups(0.1)
    assert [(g["name"], g["lr"], g["decay"]) for g in groups] == [("discriminator", 0.1, False)]
    discriminator = dann.discriminator
    coefficient = grl_coefficient(0.7)
    loss = discriminator(source, target, weights, coefficient)
    loss.backward()
    reversed_grads = source.grad.clone(), target.grad.clone(), discriminator.linear.weight.grad.clone()
    # the same loss written out without the reversal layer
    source.grad, target.grad = None, None
    discriminator.zero_grad()
    bce = torch.nn.functional.binary_cross_entropy
    probs_s = torch.sigmoid(discriminator.linear(source[[0, 2]])).flatten()
    probs_t = torch.sigmoid(discriminator.linear(target[[0, 2]])).flatten()
    plain = 0.5 * (bce(probs_s, torch.ones_like(probs_s)) + bce(probs_t, torch.zeros_like(probs_t)))
    plain.backward()
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(reversed_grads[0], -coefficient * source.grad)
    torch.testing.assert_close(reversed_grads[1], -coefficient * target.grad)
    torch.testing.assert_close(reversed_grads[2], discriminator.linear.weight.grad)  # not reversed
    assert reversed_grads[0][1].abs().sum() == 0, "a non-qualifying image gets no gradient"


def test_universum_loss_is_the_mean_of_universum_features():
    features = _features()
    loss = DALoss(_da(use_ld=False), 2, 8)
    out = loss(features, features.mean((2, 3)), torch.tensor([0, 1, 0, 1]), 0.0)
    universum = out.assignment.flatten(1) == 0
    assert universum.any()
    expected = features.flatten(2).transpose(1, 2)[universum].mean()
    torch.testing.assert_close(out.loss_u, expected)
    assert out.loss_d.item() == 0.0


def test_no_qualifying_image_gives_zero_ld_without_nan():
    features = torch.ones(3, 8, 4, 4, requires_grad=True)  # every pixel equals z: no true target
    for loss in ("mmd", "dann"):
        da = DALoss(_da(loss=loss, sample_num_source=4, sample_num_target=4), 2, 8)
        out = da(features, features.mean((2, 3)), torch.tensor([0, 1, 1]), 0.5)
        assert out.num_qualified == 0
        assert out.loss_d.item() == 0.0
        total = out.loss_d + out.loss_u
        total.backward()
        assert torch.isfinite(features.grad).all()
        features.grad = None


def test_empty_universum_gives_zero_lu_without_nan():
    features = _features()
    features.requires_grad_()
    da = DALoss(_da(), 2, 8)
    # anchors far away from every pixel: no pixel joins the universum cluster
    da.assigner.universum_anchor.fill_(100.0)
    da.assigner.universum_count.fill_(1)
    out = da(features, features.mean((2, 3)), torch.tensor([0, 1, 0, 1]), 0.5)
    assert not (out.assignment == 0).any()
    assert out.loss_u.item() == 0.0
    (out.loss_u + out.loss_d).backward()
    assert torch.isfinite(features.grad).all()


def test_ablation_switches():
    features = _features()
    labels = torch.tensor([0, 1, 0, 1])
    notsa = DALoss(_da(use_tsa=False), 2, 8)
    out = notsa(features, features.mean((2, 3)), labels, 0.5)
    assert (out.assignment == 2).all() and out.loss_u.item() == 0.0
    assert out.num_qualified == 4 and out.loss_d.item() > 0
    assert notsa.assigner.universum_count.item() == 0, "no assigner, no anchor updates"
    no_ld = DALoss(_da(use_ld=False), 2, 8)(features, features.mean((2, 3)), labels, 0.5)
    assert no_ld.loss_d.item() == 0.0 and no_ld.loss_u.item() > 0
    no_lu = DALoss(_da(use_lu=False), 2, 8)(features, features.mean((2, 3)), labels, 0.5)
    assert no_lu.loss_u.item() == 0.0 and no_lu.loss_d.item() > 0


def test_deterministic_under_a_seed_and_state_round_trip():
    features = _features(side=10)
    labels = torch.tensor([0, 1, 0, 1])

    def run(seed: int):
        torch.manual_seed(seed)
        da = DALoss(_da(loss="dann"), 2, 8)
        outs = [da(features, features.mean((2, 3)), labels, 0.1 * i) for i in range(3)]
        return da, outs

    (da1, outs1), (da2, outs2) = run(7), run(7)
    for a, b in zip(outs1, outs2, strict=True):
        assert torch.equal(a.loss_d, b.loss_d) and torch.equal(a.loss_u, b.loss_u)
        assert torch.equal(a.assignment, b.assignment)
    state = da1.state_dict()
    assert {"assigner.class_anchors", "assigner.universum_count", "discriminator.linear.weight"} <= set(state)
    fresh = DALoss(_da(loss="dann"), 2, 8)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.assigner.class_anchors, da2.assigner.class_anchors)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = da1(features, features.mean((2, 3)), labels, 0.5, gen_a)
    b = fresh(features, features.mean((2, 3)), labels, 0.5, gen_b)
    assert torch.equal(a.loss_d, b.loss_d)


def test_eval_mode_leaves_the_anchors_alone_and_settings_errors():
    features = _features()
    da = DALoss(_da(), 2, 8).eval()
    da(features, features.mean((2, 3)), torch.tensor([0, 1, 0, 1]), 0.5)
    assert da.assigner.class_counts.sum().item() == 0 and da.assigner.universum_count.item() == 0
    with pytest.raises(DawsolError, match="must equal sample_num_target"):
        DALoss(_da(sample_num_source=32, sample_num_target=16), 2, 8)
    DALoss(_da(loss="dann", sample_num_source=32, sample_num_target=16), 2, 8)  # DANN allows it


def test_lu_only_does_not_sample():
    features = _features()
    lu_only = DALoss(_da(use_ld=False, sample_num_source=500, sample_num_target=500), 2, 8)
    out = lu_only(features, features.mean((2, 3)), torch.tensor([0, 1, 0, 1]), 0.5)
    assert out.loss_d.item() == 0.0 and out.num_qualified == 0 and out.loss_u.item() > 0
