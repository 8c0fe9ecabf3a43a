"""Target Sample Assigner (TSA): batched 3-way k-means per image and the Medium Matrix anchors.

Per image b of class y, k-means over its N pixel features starts from ``[M_0, z_b, M_y]``
(universum anchor, image feature, class anchor), the official order; the clusters seeded by
them become the universum (0), fake-target (1) and true-target (2) sets. All images of a batch
are clustered at once on the features' device with the anchors as they stood at the start of
the batch (the official code loops over images and updates the anchors in between); the
anchors then take the batch's centres in the same running mean as the official sequential
updates, so after the batch they equal the official ones given the same centres.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

UNIVERSUM, FAKE_TARGET, TRUE_TARGET = 0, 1, 2
# On the CPU, cluster this many bytes of pixel features at a time so a chunk stays in cache
# across the Lloyd iterations; on accelerators the whole batch goes at once.
CPU_CHUNK_BYTES = 8 * 2**20


def _lloyd(x: Tensor, centers: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Lloyd iterations on ``x [b, N, D]`` from ``centers [b, k, D]`` until no label changes."""
    k = centers.shape[1]
    labels: Tensor | None = None
    for _ in range(max_iter):
        # argmin_j ||x - c_j||^2 = argmin_j (||c_j||^2 - 2 x.c_j)
        scores = centers.square().sum(-1).unsqueeze(1) - 2.0 * torch.bmm(x, centers.transpose(1, 2))
        new_labels = scores.argmin(-1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        onehot = F.one_hot(labels, k).to(x.dtype)  # [b, N, k]
        counts = onehot.sum(1).unsqueeze(-1)  # [b, k, 1]
        sums = torch.bmm(onehot.transpose(1, 2), x)  # [b, k, D]
        centers = torch.where(counts > 0, sums / counts.clamp_min(1.0), centers)  # an empty cluster keeps its centre
    assert labels is not None
    return labels, centers


def kmeans3(x: Tensor, init: Tensor, max_iter: int = 50) -> tuple[Tensor, Tensor]:
    """Batched k-means (Lloyd) from given initial centres, one independent problem per image.

    ``x [B, N, D]`` samples, ``init [B, k, D]`` initial centres (k = 3 for the assigner).
    Iterates until no label changes or ``max_iter`` centre updates; returns
    ``labels [B, N]`` (int64, index of the nearest centre, first on ties) and
    ``centers [B, k, D]`` (the means of those labels; an empty cluster keeps its previous
    centre). Runs in float32 (float64 input stays float64) without gradient; on the CPU the
    batch is processed in cache-sized chunks of images.
    """
    if x.ndim != 3 or init.ndim != 3 or x.shape[0] != init.shape[0] or x.shape[2] != init.shape[2]:
        raise ValueError(f"kmeans3 needs x [B, N, D] and init [B, k, D], got {tuple(x.shape)} and {tuple(init.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        x = x.detach().to(dtype)
        init = init.detach().to(dtype)
        if x.device.type != "cpu":
            return _lloyd(x, init, max_iter)
        per_image = x.shape[1] * x.shape[2] * x.element_size()
        chunk = max(1, CPU_CHUNK_BYTES // max(per_image, 1))
        parts = [_lloyd(x[i : i + chunk], init[i : i + chunk], max_iter) for i in range(0, x.shape[0], chunk)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


class TargetSampleAssigner(nn.Module):
    """The Medium Matrix (universum and class anchors with their update counts) and the assignment.

    Buffers (saved with the state dict): ``class_anchors [K, D]`` and ``class_counts [K]``,
    ``universum_anchor [D]`` (starts at 0; the first update replaces it) and ``universum_count``.
    ``anchor_update`` picks the centre a class anchor learns from: ``fake_target`` (the
    official code: the cluster seeded by z) or ``true_target`` (the paper's figure).
    """

    def __init__(self, num_classes: int, feature_dim: int, max_iter: int, anchor_update: str = "fake_target") -> None:
        super().__init__()
        if anchor_update not in ("fake_target", "true_target"):
            raise ValueError(f"anchor_update must be fake_target or true_target, got {anchor_update!r}")
        self.max_iter = max_iter
        self.update_cluster = FAKE_TARGET if anchor_update == "fake_target" else TRUE_TARGET
        self.register_buffer("class_anchors", torch.zeros(num_classes, feature_dim))
        self.register_buffer("class_counts", torch.zeros(num_classes, dtype=torch.int64))
        self.register_buffer("universum_anchor", torch.zeros(feature_dim))
        self.register_buffer("universum_count", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def forward(self, pixels: Tensor, pooled: Tensor, labels: Tensor, update: bool = True) -> Tensor:
        """Assign ``pixels [B, N, D]`` of images with features ``pooled [B, D]`` and classes ``labels [B]``.

        Returns the assignment ``[B, N]`` (0 universum, 1 fake target, 2 true target) and, if
        ``update``, updates the anchors. A class seen for the first time gets the z of its first
        image in the batch as anchor (count 1), as the official code does.
        """
        batch = pixels.shape[0]
        pixels, pooled = pixels.detach().float(), pooled.detach().float()
        unseen = self.class_counts[labels] == 0
        first = (labels[:, None] == labels[None, :]).to(torch.uint8).argmax(1)  # first image of each label
        class_init = torch.where(unseen[:, None], pooled[first], self.class_anchors[labels])
        init = torch.stack([self.universum_anchor.expand(batch, -1), pooled, class_init], dim=1)
        assignment, centers = kmeans3(pixels, init, self.max_iter)
        if update:
            self._update(pooled, labels, unseen, first, centers)
        return assignment

    def _update(self, pooled: Tensor, labels: Tensor, unseen: Tensor, first: Tensor, centers: Tensor) -> None:
        batch = pooled.shape[0]

        # running means: every contribution (a first-seen z, then one centre per image) weighs the same
        onehot = F.one_hot(labels, self.class_anchors.shape[0]).float()  # [B, K]
        seeds = (unseen & (first == torch.arange(batch, device=labels.device))).float()  # [B]
        added = onehot.T @ (pooled * seeds[:, None] + centers[:, self.update_cluster])  # [K, D]
        added_counts = onehot.T @ (seeds + 1.0)  # [K]
        total = self.class_counts.float() + added_counts
        delta = (added - added_counts[:, None] * self.class_anchors) / total.clamp_min(1.0)[:, None]
        self.class_anchors += delta
        self.class_counts += added_counts.round().long()
        universum_total = self.universum_count.float() + batch
        centres_u = centers[:, UNIVERSUM]
        self.universum_anchor += (centres_u.sum(0) - batch * self.universum_anchor) / universum_total
        self.universum_count += batch
