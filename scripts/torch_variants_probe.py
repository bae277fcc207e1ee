#!/usr/bin/env python3
"""Probe (issue 10): torch inference variants of KeyPointNet's body at 1226x370, one thread, CPU time.

    python scripts/torch_variants_probe.py     # from the repository root; needs ../shared/data/vo (KITTI 07)

Counts the body's multiply-adds (forward hooks on every convolution), then times (``time.thread_time``, median
of 3 after one) the frontend's inference copy (BatchNorm folded, channels-last), the same in NCHW,
``torch.jit.freeze`` of a trace, and ``jit.freeze`` + ``optimize_for_inference`` (NCHW), and prints the largest
output difference of the last one against the eager copy. ``--compile`` (stop 72) also times ``torch.compile``
(inductor, channels-last; compiled once for the input's shape first, ~30 s) and its largest output difference.
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import time, glob, copy
import numpy as np, cv2, torch
from torch import nn
from kp2d_ros.config import FrontendConfig
from kp2d_ros.networks.kp2d_frontend import KP2DFrontend
torch.set_num_threads(1); cv2.setNumThreads(1)
files = sorted(glob.glob('../shared/data/vo/kitti07_f0000-0159/image_0/*.png'))[:4]
imgs = [cv2.imread(f, cv2.IMREAD_GRAYSCALE) for f in files]
fe = KP2DFrontend(FrontendConfig(type="kp2d", model_path="models/keypoint_net.pt", num_features=2000))
net = fe.net
x = fe._to_tensor(imgs[0]); x = net.pad(x)
# MAC count
macs = 0
def hook(m, i, o):
    global macs
    macs += o.numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
hs = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
class Body(nn.Module):
    def __init__(s, n): super().__init__(); s.n = n
    def forward(s, x):
        n = s.n; cells, skip = n.encode(x)
        return n.score_b(n.score_a(cells)), n.loc_b(n.loc_a(cells)), n.descriptor_features(cells, skip)
body = Body(net).eval()
with torch.inference_mode(): body(x)
for h in hs: h.remove()
print("input", tuple(x.shape), "GMAC", macs / 1e9)
def timeit(f, n=4):
    ws, cs = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.thread_time(); f(); ws.append(time.perf_counter()-t0); cs.append(time.thread_time()-c0)
    return f"wall {1e3*np.median(ws[1:]):.0f} ms cpu {1e3*np.median(cs[1:]):.0f} ms"
with torch.inference_mode():
    print("eager channels_last", timeit(lambda: body(x)), flush=True)
    xc = x.contiguous()
    body_c = Body(copy.deepcopy(net).to(memory_format=torch.contiguous_format)).eval()
    print("eager NCHW", timeit(lambda: body_c(xc)), flush=True)
    with torch.no_grad():
        tr = torch.jit.freeze(torch.jit.trace(body, x).eval())
        tro = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(body_c, xc).eval()))
    print("jit freeze CL", timeit(lambda: tr(x)), flush=True)
    print("jit freeze+optimize NCHW", timeit(lambda: tro(xc)), flush=True)
    ref = body(x)
    for a, b in zip(ref, tro(xc)): print("  maxdiff", (a - b).abs().max().item())
if "--compile" in sys.argv:
    compiled = torch.compile(body)
    with torch.no_grad():
        compiled(x)  # compiles for this shape
        print("torch.compile (inductor) CL", timeit(lambda: compiled(x)), flush=True)
        for a, b in zip(body(x), compiled(x)): print("  maxdiff", (a - b).abs().max().item())
