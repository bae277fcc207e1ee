#!/usr/bin/env python3
"""Diagnostic: KITTI 07 with the residual radial distortion k1 held fixed, in the front end and in every window
(the windows do not estimate it), to see whether the kp2d/SIFT gap is the self-calibration.

    python scripts/fixed_k1_probe.py CONFIG K1 OUT_DIR     # e.g. config/vo.yaml 0.015 out/k1fix_kp2d

Patches the pipeline for this process only (the product has no such setting); deterministic replay; writes
kp2d replay's outputs to OUT_DIR and prints ATE, RPE rot, RPE trans.
"""
import sys
from pathlib import Path
from kp2d_ros.cli.replay import write_outputs
from kp2d_ros.config import load_config
from kp2d_ros.data import open_sequence
from kp2d_ros.eval.replay import replay
from kp2d_ros import pipeline as P, backend as B

cfgfile, k1, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
cfg = load_config(cfgfile)
cfg.backend.threaded = False
orig_problem = B.LocalMap.problem
B.LocalMap.problem = lambda self, sigma, k1_=0.0, calibrate=False: orig_problem(self, sigma, k1, False)
orig_after = P.VOPipeline._after_backend
def after(self, r):
    orig_after(self, r); self.k1 = k1
P.VOPipeline._after_backend = after
orig_reset = P.VOPipeline.reset
def reset(self):
    orig_reset(self); self.k1 = k1
P.VOPipeline.reset = reset
seq = open_sequence("../shared/data/vo/kitti07_f0000-0159", camera=cfg.camera)
res = replay(seq, cfg, progress=False)
rep = write_outputs(res, seq, cfg, Path(out))
print(out, k1, rep["ate_rmse_m"], rep["rpe_rot_deg"], rep["rpe_trans_m"])
