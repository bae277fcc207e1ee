"""KeyPointNet: keypoint scores, cross-border locations and 256-d descriptors (KP2D, ICLR 2020).

The encoder is a VGG-style stack of 3x3 conv + BatchNorm + LeakyReLU blocks with three 2x2
max-pools, so every cell of ``cell = 8`` pixels gets one keypoint. Three heads read the last
feature map:

* score head: one sigmoid score per cell,
* location head: a tanh offset per cell, scaled so that a keypoint may move ``cross_ratio``
  half-cells from the cell centre, i.e. across the cell border (paper: 2.0),
* descriptor head: upsampled x2 with a sub-pixel convolution (pixel shuffle), concatenated with
  the stage-3 skip features, giving dense descriptors at 1/4 resolution that are sampled
  bilinearly at the keypoints and L2-normalised.

Preprocessing (uint8 -> normalised tensor) lives in :func:`preprocess`, not in ``forward``.
Weights load through :meth:`KeyPointNet.from_file`, never in ``__init__``.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kp2d_ros.config import KeyPointNetConfig


@dataclass
class KeyPointNetOutput:
    """Dense outputs of :class:`KeyPointNet` for a batch.

    Attributes
    ----------
    scores : (B, 1, Hc, Wc) keypoint scores in [0, 1], one per cell (Hc = ceil(H / cell)).
    keypoints : (B, 2, Hc, Wc) keypoint (x, y) in input pixels (0-based centres), clamped to the image.
    descriptors : (B, D, Hd, Wd) dense L2-normalised descriptors at 1/4 of the padded input size.
    image_size : (H, W) of the input before padding.
    padded_size : (H, W) after padding to a multiple of the cell (what the dense maps cover).
    """

    scores: torch.Tensor
    keypoints: torch.Tensor
    descriptors: torch.Tensor
    image_size: tuple[int, int]
    padded_size: tuple[int, int]

    def sample_descriptors(self, points: torch.Tensor) -> torch.Tensor:
        """Bilinear descriptors at arbitrary pixel positions.

        Parameters
        ----------
        points : (B, N, 2) pixel coordinates (x, y) in the input image.

        Returns
        -------
        (B, N, D) L2-normalised descriptors.
        """
        return sample_descriptors(self.descriptors, points, self.padded_size)


def sample_descriptors(dense: torch.Tensor, points: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly sample dense descriptors at pixel positions and L2-normalise them.

    Parameters
    ----------
    dense : (B, D, Hd, Wd) descriptor map covering an image of ``image_size``.
    points : (B, N, 2) pixel coordinates (x, y), 0-based pixel centres.
    image_size : (H, W) of the image the map covers.

    Returns
    -------
    (B, N, D) descriptors with unit L2 norm.
    """
    h, w = image_size
    grid = torch.stack([(points[..., 0] + 0.5) / w * 2 - 1, (points[..., 1] + 0.5) / h * 2 - 1], dim=-1)
    desc = F.grid_sample(dense, grid[:, None].to(dense.dtype), mode="bilinear", align_corners=False)
    return F.normalize(desc[:, :, 0].transpose(1, 2), p=2, dim=-1)


def sample_conv_descriptors(features: torch.Tensor, conv: nn.Conv2d, points: torch.Tensor,
                            image_size: tuple[int, int]) -> torch.Tensor:
    """``sample_descriptors(conv(features), points, image_size)`` without the dense convolution.

    A 3x3 convolution and bilinear sampling are both linear, so sampling the convolved map at a
    point equals applying the kernel to the nine bilinear samples of ``features`` one map pixel
    apart around it. The only difference is within half a map pixel of the map border (there the
    dense path mixes in the zero padding): identical for keypoints further than ``stride / 2``
    pixels from the image border. For N keypoints this costs N * 9 * C * D multiply-adds instead of
    Hd * Wd * 9 * C * D (at 320x240 and N = 500: ~10x less than the dense last layer).

    Parameters
    ----------
    features : (B, C, Hd, Wd) input of ``conv`` covering an image of ``image_size`` (stride = H / Hd).
    conv : 3x3, padding 1, stride 1 convolution C -> D (BatchNorm may be folded in).
    points : (B, N, 2) pixel coordinates (x, y), 0-based pixel centres.

    Returns
    -------
    (B, N, D) float32 L2-normalised descriptors (the products in ``conv``'s dtype, e.g. bf16).
    """
    b, c, hd, wd = features.shape
    h, w = image_size
    offsets = torch.tensor([(dx * w / wd, dy * h / hd) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                           device=points.device, dtype=torch.float32)  # (9, 2) in kernel (ky, kx) order
    p = points.float()[:, None] + offsets[None, :, None]  # (B, 9, N, 2)
    grid = torch.stack([(p[..., 0] + 0.5) / w * 2 - 1, (p[..., 1] + 0.5) / h * 2 - 1], dim=-1)
    taps = F.grid_sample(features.float(), grid, mode="bilinear", align_corners=False)  # (B, C, 9, N)
    taps = taps.contiguous().reshape(b, c * 9, -1).to(conv.weight.dtype)  # rows in (c, ky, kx) order
    weight = conv.weight.contiguous().reshape(conv.out_channels, c * 9)  # the same order
    desc = (weight @ taps).float().transpose(1, 2)  # (B, N, D)
    if conv.bias is not None:
        desc = desc + conv.bias.float()
    return F.normalize(desc, p=2, dim=-1)


def conv_block(c_in: int, c_out: int, slope: float, momentum: float) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out, momentum=momentum),
        nn.LeakyReLU(slope, inplace=True),
    )


class KeyPointNet(nn.Module):
    """Keypoint detector and descriptor of KP2D.

    Parameters
    ----------
    config : architecture and constants; ``width_multiplier`` scales every encoder width
        (0.5 is the CPU-sized variant) while the descriptor size stays ``descriptor_dim``.
    """

    default_config = KeyPointNetConfig()

    def __init__(self, config: KeyPointNetConfig | None = None, **overrides):
        super().__init__()
        self.config = config = replace(config or self.default_config, **overrides)
        c1, c2, c3, c4 = (max(4, int(round(c * config.width_multiplier))) for c in config.channels)
        block = lambda a, b: conv_block(a, b, config.leaky_slope, config.bn_momentum)  # noqa: E731

        # Encoder: 32-32 / 64-64 / 128-128 / 256-256, three 2x2 max-pools (cell = 8).
        self.conv1a = block(config.in_channels, c1)
        self.conv1b = block(c1, c1)
        self.conv2a = block(c1, c2)
        self.conv2b = block(c2, c2)
        self.conv3a = block(c2, c3)
        self.conv3b = block(c3, c3)
        self.conv4a = block(c3, c4)
        self.conv4b = block(c4, c4)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.dropout = nn.Dropout2d(config.dropout)

        # Score head: one sigmoid score per cell.
        self.score_a = block(c4, c4)
        self.score_b = nn.Conv2d(c4, 1, kernel_size=3, padding=1)

        # Location head: tanh offset (x, y) per cell.
        self.loc_a = block(c4, c4)
        self.loc_b = nn.Conv2d(c4, 2, kernel_size=3, padding=1)

        # Descriptor head: sub-pixel upsampling x2 to 1/4, concat with the stage-3 skip.
        self.desc_a = block(c4, c4)
        self.desc_up = nn.Conv2d(c4, c3 * 4, kernel_size=3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(2)
        self.desc_b = block(c3 + c3, c4)
        self.desc_c = nn.Conv2d(c4, config.descriptor_dim, kernel_size=3, padding=1)
        # Centre the raw descriptors before L2 normalisation; without it they all share one
        # dominant direction (post-activation inputs are non-negative) and the triplet loss
        # starts from a collapsed set of descriptors.
        self.desc_norm = nn.BatchNorm2d(config.descriptor_dim, momentum=config.bn_momentum)

    def forward(self, image: torch.Tensor) -> KeyPointNetOutput:
        """Dense keypoints and descriptors.

        Parameters
        ----------
        image : (B, C, H, W) normalised image (see :func:`preprocess`); any H, W >= 1 — inputs
            that are not a multiple of ``cell`` are padded right/bottom and the keypoints are
            clamped to the unpadded image.

        Returns
        -------
        KeyPointNetOutput with scores (B, 1, Hc, Wc), keypoints (B, 2, Hc, Wc),
        descriptors (B, D, Hc * 2, Wc * 2), Hc = ceil(H / 8), Wc = ceil(W / 8).
        """
        h, w = image.shape[-2:]
        image = self.pad(image)
        x, skip = self.encode(image)
        # Heads leave autocast's low precision here: in bf16 a coordinate near x = 300 px is quantised to 2 px.
        scores = torch.sigmoid(self.score_b(self.score_a(x)).float())
        keypoints = self.locate(self.loc_b(self.loc_a(x)).float(), (h, w))
        d = self.descriptor_features(x, skip)
        descriptors = F.normalize(self.desc_norm(self.desc_c(d)).float(), p=2, dim=1)
        return KeyPointNetOutput(scores, keypoints, descriptors, (h, w), tuple(image.shape[-2:]))

    def locate(self, logits: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Keypoints (B, 2, Hc, Wc) in pixels from the location head's raw output (B, 2, Hc, Wc): each cell's centre
        moved by tanh(logits) * ``cross_ratio`` half-cells, clamped to the unpadded (H, W) image."""
        cfg = self.config
        h, w = image_size
        offsets = torch.tanh(logits)
        keypoints = self.cell_centres(logits.shape[-2:], offsets) + offsets * (cfg.cross_ratio * cfg.cell / 2)
        return torch.stack([keypoints[:, 0].clamp(0, w - 1), keypoints[:, 1].clamp(0, h - 1)], dim=1)

    def pad(self, image: torch.Tensor) -> torch.Tensor:
        """Pad (B, C, H, W) right/bottom to a multiple of ``cell`` (``pad_mode``)."""
        cfg = self.config
        h, w = image.shape[-2:]
        pad_h, pad_w = (-h) % cfg.cell, (-w) % cfg.cell
        if pad_h or pad_w:
            mode = cfg.pad_mode if (cfg.pad_mode != "reflect" or (pad_h < h and pad_w < w)) else "replicate"
            image = F.pad(image, (0, pad_w, 0, pad_h), mode=mode)
        return image

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder on a padded (B, C, H, W) image: cell features (B, c4, H/8, W/8) (after dropout)
        and the stage-3 skip features (B, c3, H/4, W/4)."""
        x = self.conv1b(self.conv1a(image))
        x = self.pool(x)
        x = self.conv2b(self.conv2a(x))
        x = self.pool(x)
        skip = self.conv3b(self.conv3a(x))
        x = self.pool(skip)
        x = self.conv4b(self.conv4a(x))
        return self.dropout(x), skip

    def descriptor_features(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Descriptor head up to its last convolution: sub-pixel upsampling x2 of the cell features,
        concatenation with the skip, conv block. (B, c4, H/4, W/4); ``desc_c`` + ``desc_norm`` +
        L2 normalisation give the descriptors."""
        d = self.pixel_shuffle(self.desc_up(self.desc_a(x)))  # (B, c3, H/4, W/4)
        return self.desc_b(torch.cat([d, skip], dim=1))

    def cell_centres(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """(1, 2, Hc, Wc) pixel (x, y) of every cell centre."""
        hc, wc = grid
        cell = self.config.cell
        ys = torch.arange(hc, device=like.device, dtype=like.dtype) * cell + (cell - 1) / 2
        xs = torch.arange(wc, device=like.device, dtype=like.dtype) * cell + (cell - 1) / 2
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy])[None]

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> "KeyPointNet":
        """Build the network described by a weights file and load its weights (eval mode).

        Raises
        ------
        ModelError
            missing, corrupt or mismatched file.
        """
        from kp2d_ros.networks.weights import load_network

        return load_network(cls, KeyPointNetConfig, path, device)


def preprocess(image: np.ndarray | torch.Tensor, config: KeyPointNetConfig, device="cpu") -> torch.Tensor:
    """uint8 (H, W) grey / (H, W, 3) RGB image(s) -> normalised (B, C, H, W) float tensor.

    Also accepts a float tensor (B, C, H, W) in [0, 1]; grey inputs are replicated to
    ``config.in_channels`` channels.
    """
    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(image))
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        t = t.to(device=device, dtype=torch.float32) / 255.0
    else:
        t = image.to(device)
    if t.shape[1] != config.in_channels:
        t = t.mean(dim=1, keepdim=True).expand(-1, config.in_channels, -1, -1) if t.shape[1] in (1, 3) else t
    return (t - config.input_mean) / config.input_std


def select_top_k(output: KeyPointNetOutput, k: int, border_px: int = 0, score_threshold: float = 0.0,
                 nms_radius: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Best ``k`` keypoints per image with their descriptors.

    Parameters
    ----------
    output : network output for B images.
    k : keypoints to keep per image (fewer if fewer pass the filters).
    border_px : drop keypoints closer than this to the image border.
    score_threshold : drop keypoints scoring below this.
    nms_radius : greedy radius suppression in pixels (0 = off).

    Returns
    -------
    list of B tuples (keypoints (N, 2) pixels, scores (N,), descriptors (N, D)), best first.
    """
    h, w = output.image_size
    b = output.scores.shape[0]
    scores = output.scores.reshape(b, -1)
    kps = output.keypoints.reshape(b, 2, -1).transpose(1, 2)
    out = []
    for i in range(b):
        s, p = scores[i], kps[i]
        keep = s >= score_threshold
        if border_px > 0:
            keep &= (p[:, 0] >= border_px) & (p[:, 0] <= w - 1 - border_px)
            keep &= (p[:, 1] >= border_px) & (p[:, 1] <= h - 1 - border_px)
        s, p = s[keep], p[keep]
        order = torch.argsort(s, descending=True)
        s, p = s[order], p[order]
        if nms_radius > 0 and len(s) > 0:
            sel = radius_nms(p, nms_radius, k)
            s, p = s[sel], p[sel]
        s, p = s[:k], p[:k]
        if len(p):
            d = sample_descriptors(output.descriptors[i:i + 1], p[None], output.padded_size)[0]
        else:
            d = output.descriptors.new_zeros((0, output.descriptors.shape[1]))
        out.append((p, s, d))
    return out


def radius_nms(points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """Indices of points (sorted best first) kept by greedy suppression within ``radius`` pixels."""
    dist = torch.cdist(points, points)
    suppressed = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    keep = []
    for i in range(len(points)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= k:
            break
        suppressed |= dist[i] < radius
    return torch.as_tensor(keep, dtype=torch.long, device=points.device)
