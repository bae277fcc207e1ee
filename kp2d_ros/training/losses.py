"""KP2D self-supervised losses, one function each.

Notation: the *source* image is warped into the *target* image by ``H`` (source pixels -> target
pixels). Dense network outputs are flattened to N = Hc * Wc keypoints per image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kp2d_ros.networks.io_net import IONet, io_net_input
from kp2d_ros.networks.keypoint_net import KeyPointNetOutput, sample_descriptors
from kp2d_ros.training.homography import warp_points


@dataclass
class Association:
    """Source keypoints warped into the target and their nearest target keypoints.

    Attributes
    ----------
    source_points : (B, N, 2) source keypoints (pixels).
    warped_points : (B, N, 2) source keypoints warped into the target.
    target_points : (B, M, 2) target keypoints.
    source_scores, target_scores : (B, N), (B, M).
    nearest : (B, N) index of the nearest target keypoint of each warped source keypoint.
    distance : (B, N) pixel distance to it.
    valid : (B, N) bool, warped point lands inside the target (minus the border).
    """

    source_points: torch.Tensor
    warped_points: torch.Tensor
    target_points: torch.Tensor
    source_scores: torch.Tensor
    target_scores: torch.Tensor
    nearest: torch.Tensor
    distance: torch.Tensor
    valid: torch.Tensor


def flatten_output(out: KeyPointNetOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 2) keypoints and (B, N) scores of a dense output."""
    b = out.scores.shape[0]
    return out.keypoints.reshape(b, 2, -1).transpose(1, 2), out.scores.reshape(b, -1)


def associate(source: KeyPointNetOutput, target: KeyPointNetOutput, H: torch.Tensor, border_px: float) -> Association:
    """Warp source keypoints with ``H`` (B, 3, 3) and find their nearest target keypoints."""
    ps, ss = flatten_output(source)
    pt, st = flatten_output(target)
    pw = warp_points(ps.float(), H.float())
    h, w = target.image_size
    valid = (pw[..., 0] >= border_px) & (pw[..., 0] <= w - 1 - border_px)
    valid &= (pw[..., 1] >= border_px) & (pw[..., 1] <= h - 1 - border_px)
    dist = torch.cdist(pw, pt.float())
    distance, nearest = dist.min(dim=-1)
    return Association(ps, pw, pt, ss, st, nearest, distance, valid)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def location_loss(a: Association, threshold_px: float) -> torch.Tensor:
    """Mean distance between warped source keypoints and their nearest target keypoints (< threshold)."""
    mask = (a.valid & (a.distance < threshold_px)).float()
    return _masked_mean(a.distance, mask)


def score_loss(a: Association, threshold_px: float) -> torch.Tensor:
    """UnsuperPoint-style score term plus score consistency between associated keypoints.

    Pairs closer than average should score high, farther ones low:
    ``mean((s + s') / 2 * (d - mean(d)))`` + ``mean((s - s')^2)``.
    """
    mask = (a.valid & (a.distance < threshold_px)).float()
    s_t = torch.gather(a.target_scores, 1, a.nearest)
    d = a.distance.detach()
    d_mean = _masked_mean(d, mask)
    usp = _masked_mean((a.source_scores + s_t) / 2 * (d - d_mean), mask)
    consistency = _masked_mean((a.source_scores - s_t) ** 2, mask)
    return usp + consistency


def descriptor_loss(source: KeyPointNetOutput, target: KeyPointNetOutput, a: Association, margin: float,
                    relax_radius_px: float) -> torch.Tensor:
    """Per-point triplet loss with the hardest negative outside a relaxation radius.

    Anchor: source descriptor at each source keypoint; positive: target descriptor at the warped
    position; negatives: target descriptors at the target keypoints farther than
    ``relax_radius_px`` from the warped position. Keypoint positions are not trained by this loss.
    """
    anchor = sample_descriptors(source.descriptors, a.source_points.detach(), source.padded_size)
    positive = sample_descriptors(target.descriptors, a.warped_points.detach(), target.padded_size)
    negatives = sample_descriptors(target.descriptors, a.target_points.detach(), target.padded_size)
    d_pos = (anchor - positive).norm(dim=-1)
    d_all = torch.cdist(anchor.float(), negatives.float())  # (B, N, M)
    far = torch.cdist(a.warped_points.detach(), a.target_points.detach()) > relax_radius_px
    d_neg = torch.where(far, d_all, torch.full_like(d_all, 4.0)).min(dim=-1).values
    return _masked_mean(F.relu(d_pos - d_neg + margin), a.valid.float())


def _top_k(points: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor | None, k: int):
    s = scores if mask is None else scores.masked_fill(~mask, -1.0)
    idx = s.topk(min(k, s.shape[1]), dim=1).indices
    return torch.gather(points, 1, idx[..., None].expand(-1, -1, 2)), idx


def io_loss(io_net: IONet, source: KeyPointNetOutput, target: KeyPointNetOutput, H: torch.Tensor,
            a: Association, top_k: int, threshold_px: float) -> tuple[torch.Tensor, dict]:
    """IO-Net classifies descriptor-matched top-k pairs as inlier (reprojection < threshold) or outlier.

    The IO-Net input (keypoint positions and descriptor distances) is NOT detached, so the
    classification gradient flows back into KeyPointNet's location and descriptor heads.

    Returns
    -------
    (binary cross-entropy, {"io_accuracy": ..., "io_inlier_ratio": ...})
    """
    ps, _ = _top_k(a.source_points, a.source_scores, a.valid, top_k)
    pt, _ = _top_k(a.target_points, a.target_scores, None, top_k)
    ds = sample_descriptors(source.descriptors, ps, source.padded_size)
    dt = sample_descriptors(target.descriptors, pt, target.padded_size)
    dist = torch.cdist(ds.float(), dt.float())
    d_match, j = dist.detach().min(dim=-1)
    d_match = torch.gather(dist, 2, j[..., None])[..., 0]  # differentiable distance of the match
    pt_match = torch.gather(pt, 1, j[..., None].expand(-1, -1, 2))
    with torch.no_grad():
        reproj = (warp_points(ps.float(), H.float()) - pt_match.float()).norm(dim=-1)
        labels = (reproj < threshold_px).float()
    logits = io_net(io_net_input(ps.float(), pt_match.float(), d_match, source.image_size)).logits.float()
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    with torch.no_grad():
        acc = ((logits > 0).float() == labels).float().mean()
    return loss, {"io_accuracy": float(acc), "io_inlier_ratio": float(labels.mean())}
