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

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dawsol.distributed import all_gather_cat, all_reduce_sum, global_rows
from dawsol.threads import pinned_threads

UNIVERSUM, FAKE_TARGET, TRUE_TARGET = 0, 1, 2
SET_NAMES = ("universum", "fake_target", "true_target")  # the sets by assignment label
# On the CPU, cluster about this many bytes of pixel features at a time, so a chunk stays in cache
# across the Lloyd iterations. Measured on 32 images of 28x28x2048 (6.4 MB each) on a shared
# 2-core machine, CPU seconds: 8 MiB chunks (1 image) 0.15, 16 MiB 0.28, 32 MiB 0.35, the whole
# 205 MB batch 0.39. On accelerators the whole batch goes at once.
CPU_CHUNK_BYTES = 8 * 2**20
# scikit-learn's default relative tolerance, which the official k_means call uses
KMEANS_TOL = 1e-4


@contextmanager
def cpu_single_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU kernels on one intra-op thread inside the block (no-op on other devices).

    The assigner's kernels are small and latency-bound; on a loaded CPU, OpenMP synchronisation
    dominated them (a 32x3x64 by 32x64x256 bmm: 11.7 ms on 2 threads, 0.4 ms on 1; the whole
    28x28x2048 batch: 1.37 s on 2 threads, 0.98 s on 1, on a shared 2-core machine).
    """
    if device.type != "cpu":
        yield
        return
    with pinned_threads(torch.get_num_threads, torch.set_num_threads):
        yield


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``[b, m, n] x [b, n, p]`` (no gradient); on the CPU through NumPy on zero-copy views.

    The assigner's products are many small ones (m = 3); on the CPU NumPy's matmul runs them in
    about a third of torch.bmm's time (32 x 3x64 by 64x256, one thread: 48 us against 162 us,
    115 us with oneDNN off), and the Lloyd loop is made of them. NumPy's BLAS keeps its own
    thread count (``OPENBLAS_NUM_THREADS``, which Snakemake sets to a job's threads); products
    this small run on one thread regardless.
    """
    if a.device.type == "cpu":
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return torch.bmm(a, b)


def _assign(features: Tensor, centers: Tensor) -> Tensor:
    """Nearest centre per sample: argmin_j ||x - c_j||^2 = argmin_j (||c_j||^2 - 2 c_j.x), first on ties."""
    scores = _bmm(centers, features).mul_(-2.0).add_(centers.square().sum(-1, keepdim=True))  # [b, k, N]
    return scores.min(1).indices  # min(dim) is much faster than argmin over a short, strided dim on the CPU


def _lloyd(features: Tensor, centers: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    """Lloyd iterations on ``features [b, D, N]`` from ``centers [b, k, D]``, with scikit-learn's stopping rules.

    An image is done when its labels repeat, or when an update moved its centres (squared,
    summed) by at most ``tol`` times the mean per-dimension variance of its samples; done images
    keep their centres while the others go on, and once at most half of the images in work are
    still going, the work shrinks to those. The labels returned are those of the final centres.
    """
    all_features = features
    num_samples, dim = features.shape[2], features.shape[1]
    classes = torch.arange(centers.shape[1], device=features.device)[:, None]  # [k, 1]
    out_centers = centers.clone()
    work = torch.arange(features.shape[0], device=features.device)  # the images in work
    square_total = torch.linalg.vector_norm(features, dim=(1, 2)).square()  # [b]: sum_n ||x_n||^2
    threshold: Tensor | None = None
    previous: Tensor | None = None
    done = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    for _ in range(max_iter):
        labels = _assign(features, centers)  # for a done image, these are already its final labels
        if previous is not None:
            done = done | (labels == previous).all(1)
            if bool(done.all()):
                if work.numel() == all_features.shape[0]:  # never shrunk: these labels are final for all
                    return labels, centers
                break
        members = (labels.unsqueeze(1) == classes).to(features.dtype)  # [b, k, N]
        counts = members.sum(2, keepdim=True)  # [b, k, 1]
        sums = _bmm(members, features.transpose(1, 2))  # [b, k, D]
        if threshold is None:  # tol * mean over dimensions of the samples' (biased) variance
            mean = sums.sum(1) / num_samples
            threshold = tol * (square_total / num_samples - mean.square().sum(1)) / dim
        updated = torch.where(counts > 0, sums / counts.clamp_min(1.0), centers)  # an empty cluster keeps its centre
        shift = (updated - centers).square().sum((1, 2))
        centers = torch.where(done[:, None, None], centers, updated)
        done = done | (shift <= threshold)
        previous = labels
        going = (~done).nonzero().squeeze(1)
        if 0 < 2 * going.numel() <= done.numel():  # keep the finished images' centres, go on with the rest
            out_centers[work] = centers
            work, features, centers = work[going], features[going], centers[going]
            threshold, previous, done = threshold[going], previous[going], done[going]
    out_centers[work] = centers
    return _assign(all_features, out_centers), out_centers


def kmeans3(x: Tensor, init: Tensor, max_iter: int = 50, tol: float = KMEANS_TOL) -> tuple[Tensor, Tensor]:
    """Batched k-means (Lloyd) from given initial centres, one independent problem per image.

    ``x [B, N, D]`` samples, ``init [B, k, D]`` initial centres (k = 3 for the assigner). Each
    image follows scikit-learn's ``k_means(..., init=init, n_init=1)`` Lloyd loop: at most
    ``max_iter`` centre updates, stopping when the labels repeat or the centres move by at most
    ``tol`` (relative to the mean per-dimension variance of the image's samples). One
    difference: an empty cluster keeps its centre instead of being moved to a far sample.
    Returns ``labels [B, N]`` (int64, the nearest final centre, first on ties) and
    ``centers [B, k, D]``. Runs in float32 (float64 input stays float64) without gradient; on
    the CPU the batch goes in cache-sized chunks of images, elsewhere all at once.
    """
    if x.ndim != 3 or init.ndim != 3 or x.shape[0] != init.shape[0] or x.shape[2] != init.shape[2]:
        raise ValueError(f"kmeans3 needs x [B, N, D] and init [B, k, D], got {tuple(x.shape)} and {tuple(init.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        features = x.detach().to(dtype).transpose(1, 2)  # [B, D, N]: the model's own layout, no copy
        init = init.detach().to(dtype)
        if x.device.type != "cpu":
            return _lloyd(features, init, max_iter, tol)
        per_image = x.shape[1] * x.shape[2] * features.element_size()
        chunk = max(1, CPU_CHUNK_BYTES // max(per_image, 1))
        with cpu_single_thread(x.device):
            parts = [
                _lloyd(features[i : i + chunk], init[i : i + chunk], max_iter, tol) for i in range(0, x.shape[0], chunk)
            ]
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
        with cpu_single_thread(pixels.device):
            return self._assign_and_update(pixels.detach().float(), pooled.detach().float(), labels, update)

    def _assign_and_update(self, pixels: Tensor, pooled: Tensor, labels: Tensor, update: bool) -> Tensor:
        batch = pixels.shape[0]
        unseen = self.class_counts[labels] == 0
        # under torchrun this rank holds rows [offset, offset + batch) of the global batch
        # (dawsol.distributed); "first image of a label" is taken over the global batch
        all_pooled, all_labels = all_gather_cat(pooled), all_gather_cat(labels)
        _, offset = global_rows(batch)
        first = (labels[:, None] == all_labels[None, :]).to(torch.uint8).argmax(1)  # first image of each label
        class_init = torch.where(unseen[:, None], all_pooled[first], self.class_anchors[labels])
        init = torch.stack([self.universum_anchor.expand(batch, -1), pooled, class_init], dim=1)
        assignment, centers = kmeans3(pixels, init, self.max_iter)
        if update:
            self._update(pooled, labels, unseen, first - offset, centers)
        return assignment

    def _update(self, pooled: Tensor, labels: Tensor, unseen: Tensor, first: Tensor, centers: Tensor) -> None:
        """The running-mean update from this batch; under torchrun the sums and counts are summed
        over ranks first, so every rank applies the same update to the same anchors."""
        # running means: every contribution (a first-seen z, then one centre per image) weighs the same
        onehot = F.one_hot(labels, self.class_anchors.shape[0]).float()  # [B, K]
        seeds = (unseen & (first == torch.arange(pooled.shape[0], device=labels.device))).float()  # [B]
        added = all_reduce_sum(onehot.T @ (pooled * seeds[:, None] + centers[:, self.update_cluster]))  # [K, D]
        added_counts = all_reduce_sum(onehot.T @ (seeds + 1.0))  # [K]
        centres_u = centers[:, UNIVERSUM]
        universum_sum = all_reduce_sum(centres_u.sum(0))
        batch = int(all_reduce_sum(torch.tensor(centres_u.shape[0], device=centres_u.device)))
        total = self.class_counts.float() + added_counts
        delta = (added - added_counts[:, None] * self.class_anchors) / total.clamp_min(1.0)[:, None]
        self.class_anchors += delta
        self.class_counts += added_counts.round().long()
        universum_total = self.universum_count.float() + batch
        self.universum_anchor += (universum_sum - batch * self.universum_anchor) / universum_total
        self.universum_count += batch
