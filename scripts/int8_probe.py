#!/usr/bin/env python3
"""Probe (issue 10): onnxruntime static int8 quantisation of KeyPointNet's body, speed and output change.

    python scripts/int8_probe.py        # from the repository root; needs onnx, onnxruntime and ../shared/data/vo (KITTI 07, TUM fr2/desk)

Exports the body (encoder + score/location heads + descriptor features, shipped weights, BatchNorm folded) at
the KITTI 07 frame size, quantises it (QOperator, uint8 activations, per-channel int8 weights) calibrated on 6
TUM fr2/desk frames (not the sequence it is timed on), and prints the CPU time per run (1 thread, median of 4
after one) of fp32 and int8, and the largest output difference per output (score logits, location logits,
descriptor features) next to the output's largest magnitude. Files go to out/.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import time, glob, copy, numpy as np, cv2, torch, onnxruntime as ort, warnings
from onnxruntime.quantization import quantize_static, CalibrationDataReader, QuantType, QuantFormat
from kp2d_ros.config import FrontendConfig
from kp2d_ros.networks.kp2d_frontend import KP2DFrontend, NetworkBody
torch.set_num_threads(1); cv2.setNumThreads(1)
files = sorted(glob.glob('../shared/data/vo/tum_fr2_desk_20f/rgb/*.png'))[:6]
ft = KP2DFrontend(FrontendConfig(type="kp2d", engine="torch"))
kit = cv2.imread(sorted(glob.glob('../shared/data/vo/kitti07_f0000-0159/image_0/*.png'))[0], cv2.IMREAD_GRAYSCALE)
x = ft.net.pad(ft._to_tensor(kit)).contiguous()
H, W = x.shape[-2:]
calib = []
for f in files:
    im = cv2.resize(cv2.imread(f, cv2.IMREAD_GRAYSCALE), (W, H))
    calib.append(ft._to_tensor(im).contiguous().numpy())
body = NetworkBody(copy.deepcopy(ft.net).to(memory_format=torch.contiguous_format)).eval()
with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(body, (torch.zeros(1, 3, H, W),), "out/fp32.onnx", input_names=["image"], output_names=["s","l","f"], opset_version=17, dynamo=False)
class R(CalibrationDataReader):
    def __init__(s): s.it = iter(calib)
    def get_next(s):
        v = next(s.it, None); return None if v is None else {"image": v}
from onnxruntime.quantization.shape_inference import quant_pre_process
quant_pre_process("out/fp32.onnx", "out/fp32_pre.onnx")
quantize_static("out/fp32_pre.onnx", "out/int8.onnx", R(), quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
so = ort.SessionOptions(); so.intra_op_num_threads = 1
S = {k: ort.InferenceSession(f"out/{k}.onnx", so, providers=["CPUExecutionProvider"]) for k in ("fp32", "int8")}
xn = x.numpy(); T = {k: [] for k in S}
for i in range(5):
    for k, s in S.items():
        c = time.thread_time(); o = s.run(None, {"image": xn}); T[k].append(1e3*(time.thread_time()-c))
print({k: round(np.median(v[1:])) for k, v in T.items()})
a = S["fp32"].run(None, {"image": xn}); b = S["int8"].run(None, {"image": xn})
for u, v in zip(a, b): print("maxdiff", np.abs(u-v).max(), "scale", np.abs(u).max())
