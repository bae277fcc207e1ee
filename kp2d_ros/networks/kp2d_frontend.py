"""The learned KP2D frontend: image -> :class:`~kp2d_ros.types.Features` with KeyPointNet.

Inference path (what :meth:`KP2DFrontend.detect` does, in order):

1. resize to ``frontend.resolution`` on the CPU (``cv2.INTER_AREA``), upload the uint8 image
   and normalise it on the device;
2. run an inference copy of the network: BatchNorm folded into the convolutions, channels-last
   memory layout, weights in fp16 on CUDA / bf16 on a CPU with native bf16 when ``frontend.half_precision``;
   in fp32 on the CPU, the network body (encoder, score and location heads, descriptor features) runs on
   onnxruntime when ``frontend.engine`` asks for it (default torch) and it is installed (:class:`OnnxBody`; same outputs
   within 1e-4, tested), else on torch;
3. rebuild the keypoint coordinates in fp32 from the location head's raw output (in fp16/bf16 a
   coordinate near x = 600 px would be quantised to 0.5-4 px);
4. vectorised non-maximum suppression within ``frontend.nms_radius`` pixels, border and score
   filters, top-k (``frontend.num_features``);
5. descriptors at the kept keypoints only: the descriptor head runs densely up to its last 3x3
   convolution, which is then evaluated at the keypoints (:func:`sample_conv_descriptors`: exact,
   ~10x fewer multiply-adds than the dense layer, the largest of the network), L2-normalised in fp32;
6. keypoints mapped back to input pixels (pixel-centre convention).
"""
from __future__ import annotations

import copy
import io
import logging
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from kp2d_ros.config import FrontendConfig
from kp2d_ros.errors import DataError
from kp2d_ros.frontend_common import DetectionMask, has_content, resize_to_working
from kp2d_ros.networks.keypoint_net import KeyPointNet, sample_conv_descriptors
from kp2d_ros.runtime import cpu_has_native_bf16
from kp2d_ros.types import Features, Frontend

log = logging.getLogger(__name__)


def select_device(name: str, key: str = "frontend.device") -> torch.device:
    """Resolve a device setting: ``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda``.

    ``cuda`` without a usable CUDA device falls back to the CPU and logs one warning naming
    ``key`` (the setting that asked for it).
    """
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if name == "cuda":
        log.warning("%s: cuda requested but CUDA is not available; running on the CPU", key)
    return torch.device("cpu")


pick_device = select_device  # the name used before the device logging existed


def half_precision_dtype(device: torch.device) -> torch.dtype:
    """The dtype ``frontend.half_precision`` means on ``device``: fp16 on CUDA, bf16 on a CPU with native
    bf16 (AVX512-BF16/AMX), else fp32 (emulated bf16 is ~8x slower than fp32; logged once)."""
    if device.type == "cuda":
        return torch.float16
    if cpu_has_native_bf16():
        return torch.bfloat16
    global _warned_bf16
    if not _warned_bf16:
        log.info("frontend.half_precision: this CPU has no native bf16 (AVX512-BF16/AMX); running in fp32")
        _warned_bf16 = True
    return torch.float32


_warned_bf16 = False


def inference_copy(model: KeyPointNet, device: torch.device, dtype: torch.dtype) -> KeyPointNet:
    """An eval-mode copy of ``model`` for inference: BatchNorm folded into the preceding convolution,
    channels-last layout, weights in ``dtype`` on ``device``. The original is left untouched."""
    net = copy.deepcopy(model).eval()
    for block in net.modules():
        if isinstance(block, nn.Sequential) and len(block) >= 2 and isinstance(block[0], nn.Conv2d) \
                and isinstance(block[1], nn.BatchNorm2d):
            block[0] = fuse_conv_bn_eval(block[0], block[1])
            block[1] = nn.Identity()
    # the descriptor head's last convolution may be followed by its own BatchNorm
    if isinstance(getattr(net, "desc_c", None), nn.Conv2d) and isinstance(getattr(net, "desc_norm", None), nn.BatchNorm2d):
        net.desc_c = fuse_conv_bn_eval(net.desc_c, net.desc_norm)
        net.desc_norm = nn.Identity()
    return net.to(device=device, dtype=dtype, memory_format=torch.channels_last)


class NetworkBody(nn.Module):
    """What the frontend runs densely: (1, C, H, W) padded image -> score logits (1, 1, H/8, W/8), raw location
    output (1, 2, H/8, W/8) and the descriptor features (1, c4, H/4, W/4) that ``desc_c`` reads."""

    def __init__(self, net: KeyPointNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        net = self.net
        cells, skip = net.encode(image)
        return net.score_b(net.score_a(cells)), net.loc_b(net.loc_a(cells)), net.descriptor_features(cells, skip)


def resolve_engine(name: str, device: torch.device, dtype: torch.dtype) -> str:
    """``frontend.engine`` -> ``torch``, ``torchscript`` or ``onnxruntime``.

    ``torchscript`` (the default) runs the same torch body traced and frozen (:class:`FrozenBody`) on the CPU;
    elsewhere it is plain torch. onnxruntime runs only fp32 on the CPU; ``auto`` picks it there when the
    packages ``onnx`` (torch's exporter needs it) and ``onnxruntime`` are installed, else ``torchscript``. An
    explicit ``onnxruntime`` that cannot be used (not installed, CUDA, half precision) falls back to torch with
    one warning.
    """
    if name == "torch":
        return "torch"
    if name == "torchscript":
        return "torchscript" if device.type == "cpu" else "torch"
    usable = device.type == "cpu" and dtype == torch.float32
    try:
        import onnx  # noqa: F401 - optional dependencies: torch's exporter needs onnx
        import onnxruntime  # noqa: F401
    except ImportError:
        usable = False
        why = "onnx/onnxruntime are not installed (pip install onnx onnxruntime)"
    else:
        why = f"it runs fp32 on the CPU only (here {device.type}, {dtype})"
    if usable:
        return "onnxruntime"
    if name == "onnxruntime":
        log.warning("frontend.engine: onnxruntime requested but %s; running the network on torch", why)
        return "torch"
    return "torchscript" if device.type == "cpu" else "torch"


class FrozenBody:
    """:class:`NetworkBody` of an inference copy, traced once on a small input and frozen by TorchScript
    (``torch.jit.freeze``: weights become constants, the graph is optimised as a whole); any input size.

    Same operations as the eager body: on a CPU with native bf16 its outputs are bit-identical to eager torch
    (tested on the shipped weights) and it takes ~25 % less time (KeyPointNet width 0.5 at 1232x376, 1 thread:
    67 against 87 ms, docs/results.md *Speed*); in fp32 they agree within 1e-5.
    """

    def __init__(self, net: KeyPointNet, dtype: torch.dtype):
        body = NetworkBody(net).eval()
        dummy = torch.zeros(1, net.config.in_channels, 64, 96, dtype=dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = torch.jit.freeze(torch.jit.trace(body, (dummy,), check_trace=False).eval())

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.module(image)


class OnnxBody:
    """:class:`NetworkBody` of an inference copy on onnxruntime's CPU provider, any input size.

    The body is exported in memory (ONNX, dynamic height and width) when the frontend is built (~1-2 s);
    onnxruntime runs it with ``threads`` intra-op threads that sleep when idle (no spinning: the CPU is
    shared with OpenCV, the other threads of the node and other processes).
    """

    def __init__(self, net: KeyPointNet, threads: int):
        import onnxruntime as ort

        body = NetworkBody(copy.deepcopy(net).float().to(memory_format=torch.contiguous_format)).eval()
        dummy = torch.zeros(1, net.config.in_channels, 64, 96)
        buf = io.BytesIO()
        dims = {2: "height", 3: "width"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(body, (dummy,), buf, input_names=["image"], output_names=["score", "loc", "features"],
                              dynamic_axes={"image": dims, "score": dims, "loc": dims, "features": dims},
                              opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = image.detach().float().contiguous().cpu().numpy()
        score, loc, features = (torch.from_numpy(a) for a in self.session.run(None, {"image": x}))
        # channels-last features: bilinear sampling of the descriptor taps is ~3x faster on them
        return score, loc, features.contiguous(memory_format=torch.channels_last)


def cell_scores(score_logits: torch.Tensor) -> torch.Tensor:
    """(Hc, Wc) fp32 keypoint scores from the score head's (1, 1, Hc, Wc) logits, in any dtype. The sigmoid runs in
    fp32: in bf16 its outputs near 1 lie 0.002-0.004 apart, and the shipped network's 2000 best cells on a KITTI
    image shared ~80 distinct scores (~330 from the same logits in fp32), so their order was the sort's choice."""
    return torch.sigmoid(score_logits[0, 0].float())


def local_maxima(scores: torch.Tensor, keypoints: torch.Tensor, radius: float, reach_cells: int) -> torch.Tensor:
    """Keypoints that score highest among all keypoints within ``radius`` pixels (ties: lower index wins).

    One pass, fully vectorised: every cell compares itself with the keypoints of the
    ``(2 * reach_cells + 1)^2`` cells around it (keypoints may sit up to a cell outside their own
    cell, so the window must cover ``radius`` plus twice that offset).

    Parameters
    ----------
    scores : (Hc, Wc) float32 cell scores.
    keypoints : (2, Hc, Wc) float32 keypoint (x, y) per cell.
    radius : suppression radius in pixels (> 0).
    reach_cells : neighbourhood half-width in cells.

    Returns
    -------
    (Hc * Wc,) bool, True for the kept cells (row-major).
    """
    hc, wc = scores.shape
    k = 2 * reach_cells + 1
    pad = (reach_cells,) * 4
    s_nb = F.unfold(F.pad(scores[None, None], pad, value=-math.inf), k)[0]  # (k*k, N)
    p_nb = F.unfold(F.pad(keypoints[None], pad, value=-1e6), k)[0].view(2, k * k, -1)  # (2, k*k, N)
    s = scores.reshape(1, -1)
    p = keypoints.reshape(2, 1, -1)
    idx = torch.arange(hc * wc, device=scores.device).view(hc, wc).float()
    i_nb = F.unfold(F.pad(idx[None, None], pad, value=-1.0), k)[0]
    near = ((p_nb - p) ** 2).sum(0) < radius * radius
    stronger = (s_nb > s) | ((s_nb == s) & (i_nb < idx.reshape(1, -1)) & (i_nb >= 0))
    return ~(near & stronger).any(0)


class KP2DFrontend(Frontend):
    """KeyPointNet detector/descriptor behind the common frontend interface.

    Parameters
    ----------
    config : ``frontend`` section: model_path, device, resolution ([w, h] working size, [0, 0] =
        input size), num_features (top-k), nms_radius (pixels at the working size, 0 = off),
        score_threshold, half_precision (fp16 on CUDA, bf16 on CPU).
    model : an already loaded network (tests, evaluation); default loads ``config.model_path``.

    Raises
    ------
    ModelError
        missing/corrupt/mismatched weights.
    """

    name = "kp2d"

    def __init__(self, config: FrontendConfig | None = None, model: KeyPointNet | None = None):
        self.config = config or FrontendConfig(type="kp2d")
        self.device = select_device(self.config.device)
        self.model = (model or KeyPointNet.from_file(self.config.model_path, "cpu")).eval()
        self.dtype = half_precision_dtype(self.device) if self.config.half_precision else torch.float32
        self.net = inference_copy(self.model, self.device, self.dtype)
        self.engine = resolve_engine(self.config.engine, self.device, self.dtype)
        # threads: pipeline.torch_threads, applied before the frontend is built
        self._body = (OnnxBody(self.net, torch.get_num_threads()) if self.engine == "onnxruntime"
                      else FrozenBody(self.net, self.dtype) if self.engine == "torchscript" else None)
        cfg = self.model.config
        self._offset_px = cfg.cross_ratio * cfg.cell / 2  # largest keypoint offset from its cell centre
        self._mean = torch.tensor(cfg.input_mean, device=self.device)
        self._std = torch.tensor(cfg.input_std, device=self.device)
        self.mask = DetectionMask(self.config.mask_ratios, self.config.mask_image)

    # ----------------------------------------------------------------------------------------
    def detect(self, image: np.ndarray) -> Features:
        """Keypoints, descriptors and scores of one image.

        Parameters
        ----------
        image : (H, W) uint8 grey or (H, W, 3) uint8 RGB.

        Returns
        -------
        Features with keypoints (N, 2) float32 in input pixels, descriptors (N, 256) float32
        L2-normalised, scores (N,) float32, best first, N <= num_features.
        """
        kps, scores, desc = self.detect_tensors(image)
        return Features(kps.cpu().numpy(), desc.cpu().numpy(), scores.cpu().numpy())

    def detect_tensors(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Like :meth:`detect` but returns float32 tensors on the frontend's device:
        keypoints (N, 2) in input pixels, scores (N,), descriptors (N, D)."""
        work, (w, h), (rw, rh) = self._working_image(image)
        if not has_content(work):  # a black frame: the network's top-k keypoints would be noise
            d = self.model.config.descriptor_dim
            return (torch.zeros((0, 2), device=self.device), torch.zeros(0, device=self.device),
                    torch.zeros((0, d), device=self.device))
        x = self._to_tensor(work)
        net = self.net
        with torch.inference_mode():
            x = net.pad(x)
            if self._body is not None:
                score_logits, loc_raw, features = self._body(x)
            else:
                cells, skip = net.encode(x)
                score_logits, loc_raw, features = net.score_b(net.score_a(cells)), net.loc_b(net.loc_a(cells)), None
            scores = cell_scores(score_logits)
            kps = self._keypoints(loc_raw[0].float(), rw, rh)
            keep = self._filter(scores, kps, rw, rh)
            mask = self.mask.at((w, h), (rw, rh))
            if mask is not None:  # frontend.mask_*: no keypoint where the mask is black
                allowed = torch.from_numpy(mask > 0).to(kps.device)
                xi = kps[0].reshape(-1).round().long().clamp_(0, rw - 1)
                yi = kps[1].reshape(-1).round().long().clamp_(0, rh - 1)
                keep &= allowed[yi, xi]
            s = scores.reshape(-1)[keep]
            p = kps.reshape(2, -1)[:, keep].T.contiguous()
            order = torch.argsort(s, descending=True)[: self.config.num_features]
            s, p = s[order], p[order]
            if len(p):  # the last descriptor convolution runs at the kept keypoints only
                if features is None:
                    features = net.descriptor_features(cells, skip)
                desc = sample_conv_descriptors(features, net.desc_c, p[None], tuple(x.shape[-2:]))[0]
            else:
                desc = torch.zeros((0, self.model.config.descriptor_dim), device=p.device)
            scale = p.new_tensor([w / rw, h / rh])
            p = (p + 0.5) * scale - 0.5  # working pixels -> input pixels (pixel-centre convention)
        return p, s.float(), desc

    # ----------------------------------------------------------------------------------------
    def _working_image(self, image: np.ndarray):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3) \
                or (image.ndim == 3 and image.shape[2] not in (1, 3)) or min(image.shape[:2]) < 8:
            raise DataError(f"KP2DFrontend.detect: expected an (H, W) or (H, W, 3) uint8 image >= 8 px, got "
                            f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[..., 0]
        h, w = image.shape[:2]
        work, _ = resize_to_working(image, self.config.resolution, self.config.scale)
        return work, (w, h), (work.shape[1], work.shape[0])

    def _to_tensor(self, work: np.ndarray) -> torch.Tensor:
        """uint8 (h, w[, 3]) -> normalised (1, C, h, w) channels-last tensor of the network dtype."""
        t = torch.from_numpy(np.ascontiguousarray(work)).to(self.device, non_blocking=True)
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        c = self.model.config.in_channels
        if t.shape[1] != c:
            t = t.float().mean(dim=1, keepdim=True).expand(-1, c, -1, -1) if t.shape[1] == 3 else t.expand(-1, c, -1, -1)
        t = (t.float() / 255.0 - self._mean) / self._std
        return t.to(self.dtype).contiguous(memory_format=torch.channels_last)

    def _keypoints(self, loc_raw: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """(2, Hc, Wc) fp32 keypoints (working pixels) from the location head's raw (2, Hc, Wc) output,
        rebuilt in fp32 (in bf16/fp16 a coordinate near x = 600 px would be quantised to 0.5-4 px)."""
        return self.model.locate(loc_raw[None].float(), (h, w))[0]

    def _filter(self, scores: torch.Tensor, kps: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """(Hc * Wc,) bool: score threshold, image border and non-maximum suppression."""
        border = self.model.config.border_px
        x, y = kps[0].reshape(-1), kps[1].reshape(-1)
        keep = scores.reshape(-1) >= self.config.score_threshold
        if border > 0:
            keep &= (x >= border) & (x <= w - 1 - border) & (y >= border) & (y <= h - 1 - border)
        r = self.config.nms_radius
        if r > 0:
            reach = math.ceil((r + 2 * self._offset_px) / self.model.config.cell)
            keep &= local_maxima(scores, kps, float(r), reach)
        return keep
