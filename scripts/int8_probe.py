#!/usr/bin/env python3
"""Probe (issue 10): onnxruntime static int8 quantisation of KeyPointNet's body: speed, output change, and what
it does to a replay. Tried and not kept (docs/results.md, *Speed*).

    python scripts/int8_probe.py [--format qdq|qoperator] [--calibrate percentile|minmax|entropy]
        [--exclude loc_b,...] [--replay SEQ --out DIR] [--json FILE]

Exports the frontend's dense body (:class:`NetworkBody`: encoder, score and location heads, descriptor
features; shipped weights) with dynamic height and width, quantises it (per-channel int8 weights, uint8
activations) calibrated on 16 crops of ``../shared/data/train_images`` at the KITTI frame size (never an
evaluation sequence), and prints, on the first 10 KITTI 07 frames at 1232x376 with 2 threads: the median time of
the frozen torch body (the default engine), onnxruntime fp32 and int8; how far the top-2000 cells' keypoints move
(px), the overlap of the top-2000 cells, and the descriptor features' relative error. ``--exclude`` keeps the
convolutions whose ONNX names contain these strings in fp32. ``--replay SEQ`` then runs ``kp2d replay``'s
function twice with ``frontend.engine: onnxruntime`` (fp32), once as it is and once with the int8 body in place
of the fp32 one, and writes each ``report.json`` to ``--out``/fp32 and ``--out``/int8.
"""
from __future__ import annotations

import argparse
import copy
import glob
import io
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
W, H = 1232, 376


def _session(model, threads: int = 2):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads, o.inter_op_num_threads = threads, 1
    o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    o.log_severity_level = 3
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


class Int8Body:
    """Stands in for the frontend's ``OnnxBody``: the same outputs, from the quantised model."""

    def __init__(self, session):
        self.session = session

    def __call__(self, image):
        import torch

        x = image.detach().float().contiguous().cpu().numpy()
        score, loc, features = (torch.from_numpy(a) for a in self.session.run(None, {"image": x}))
        return score, loc, features.contiguous(memory_format=torch.channels_last)


def main(argv=None) -> int:
    import cv2
    import torch
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    from kp2d_ros.networks.keypoint_net import KeyPointNet
    from kp2d_ros.networks.kp2d_frontend import FrozenBody, NetworkBody, inference_copy

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO / "models" / "keypoint_net.pt"))
    p.add_argument("--format", choices=["qdq", "qoperator"], default="qdq")
    p.add_argument("--calibrate", choices=["percentile", "minmax", "entropy"], default="percentile")
    p.add_argument("--exclude", default="", help="comma-separated substrings of conv names kept in fp32")
    p.add_argument("--replay", metavar="SEQ", help="also replay SEQ with the int8 body")
    p.add_argument("--out", default="out/int8_replay", help="the replay's output folder")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args(argv)
    torch.set_num_threads(2)

    net = KeyPointNet.from_file(args.model).eval()
    cfg = net.config
    mean, std = torch.tensor(cfg.input_mean), torch.tensor(cfg.input_std)

    def prep(img):
        t = torch.from_numpy(np.ascontiguousarray(img)).float()[None, None] / 255.0
        return ((t - mean) / std).expand(-1, cfg.in_channels, -1, -1).contiguous()

    rng = np.random.default_rng(0)
    files = sorted(glob.glob(str(DATA / "train_images" / "**" / "*.jpg"), recursive=True))
    if not files:
        print(f"error: no training images under {DATA / 'train_images'}", file=sys.stderr)
        return 2
    calib = []
    for f in rng.choice(files, 16, replace=False):
        im = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        s = max(W / im.shape[1], H / im.shape[0])
        im = cv2.resize(im, (max(W, round(im.shape[1] * s)), max(H, round(im.shape[0] * s))))
        y, x = rng.integers(0, im.shape[0] - H + 1), rng.integers(0, im.shape[1] - W + 1)
        calib.append(prep(im[y:y + H, x:x + W]).numpy())

    out_dir = REPO / "out" / "int8"
    out_dir.mkdir(parents=True, exist_ok=True)
    body = NetworkBody(copy.deepcopy(net).float()).eval()
    dims = {2: "height", 3: "width"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(body, (torch.zeros(1, cfg.in_channels, 64, 96),), str(out_dir / "body.onnx"),
                          input_names=["image"], output_names=["score", "loc", "features"],
                          dynamic_axes={"image": dims, "score": dims, "loc": dims, "features": dims},
                          opset_version=17, dynamo=False)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    import onnx

    quant_pre_process(str(out_dir / "body.onnx"), str(out_dir / "body_pre.onnx"), skip_symbolic_shape=True)
    convs = [n.name for n in onnx.load(str(out_dir / "body_pre.onnx")).graph.node if n.op_type == "Conv"]
    keep = [c for c in convs if any(e and e in c for e in args.exclude.split(","))]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x}

    quantize_static(str(out_dir / "body_pre.onnx"), str(out_dir / "body_int8.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ if args.format == "qdq" else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=keep, calibrate_method=getattr(CalibrationMethod, args.calibrate.capitalize()
                                                                    if args.calibrate != "minmax" else "MinMax"))
    s32, s8 = _session(str(out_dir / "body.onnx")), _session(str(out_dir / "body_int8.onnx"))
    frozen = FrozenBody(inference_copy(net, torch.device("cpu"), torch.float32), torch.float32)
    frames = sorted(glob.glob(str(DATA / "vo" / "kitti07_f0000-0159" / "image_0" / "*.png")))[:10]
    xs = [net.pad(prep(cv2.imread(f, cv2.IMREAD_GRAYSCALE))) for f in frames]

    def timed(fn, n=10):
        ts = []
        for i in range(n):
            t = time.perf_counter()
            fn(xs[i % len(xs)])
            ts.append(time.perf_counter() - t)
        return 1e3 * float(np.median(ts[2:]))

    with torch.inference_mode():
        t_torch = timed(lambda x: frozen(x.contiguous(memory_format=torch.channels_last)))
    t32 = timed(lambda x: s32.run(None, {"image": x.numpy()}))
    t8 = timed(lambda x: s8.run(None, {"image": x.numpy()}))
    reach = cfg.cross_ratio * cfg.cell / 2
    moved, overlap, feat = [], [], []
    for x in xs:
        a, b = s32.run(None, {"image": x.numpy()}), s8.run(None, {"image": x.numpy()})
        top_a = np.argsort(-a[0].ravel())[:2000]
        top_b = np.argsort(-b[0].ravel())[:2000]
        la, lb = (np.tanh(o[1][0]).reshape(2, -1)[:, top_a] * reach for o in (a, b))
        moved.append(np.linalg.norm(la - lb, axis=0))
        overlap.append(len(np.intersect1d(top_a, top_b)) / 2000)
        feat.append(float(np.linalg.norm(a[2] - b[2]) / np.linalg.norm(a[2])))
    d = np.concatenate(moved)
    res = {"format": args.format, "calibrate": args.calibrate, "kept_fp32": keep,
           "ms_torchscript_fp32": round(t_torch, 1), "ms_onnxruntime_fp32": round(t32, 1),
           "ms_onnxruntime_int8": round(t8, 1), "keypoint_moved_px": {"median": round(float(np.median(d)), 3),
                                                                      "p90": round(float(np.percentile(d, 90)), 3),
                                                                      "max": round(float(d.max()), 3)},
           "top2000_overlap": round(float(np.mean(overlap)), 3), "features_rel_error": round(float(np.mean(feat)), 4)}
    if args.replay:
        from kp2d_ros.cli.replay import write_outputs
        from kp2d_ros.config import load_config
        from kp2d_ros.data import open_sequence
        from kp2d_ros.eval.replay import replay
        from kp2d_ros.pipeline import VOPipeline

        vo_cfg = load_config(REPO / "config" / "vo.yaml", overrides={"frontend.engine": "onnxruntime",
                                                                     "frontend.half_precision": False})
        vo_cfg.backend.threaded = False
        seq = open_sequence(args.replay, camera=vo_cfg.camera)
        res["replay"] = {"sequence": str(args.replay)}
        for name, session in (("fp32", None), ("int8", s8)):  # onnxruntime both: only the quantisation differs
            pipeline = VOPipeline(vo_cfg)
            if session is not None:
                pipeline.frontend._body = Int8Body(session)
            try:
                result = replay(seq, vo_cfg, progress=False, pipeline=pipeline)
            finally:
                pipeline.close()
            report = write_outputs(result, seq, vo_cfg, Path(args.out) / name)
            res["replay"][name] = {k: report[k] for k in ("ate_rmse_m", "rpe_rot_deg", "fps")}
    print(json.dumps(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
