#!/usr/bin/env python3
"""Can KeyPointNet's location head alone get more precise on this CPU? (issue 10: localisation error <= 0.85 px)

    python scripts/location_head_probe.py [--data ../shared/data/train_images] [--homography ../shared/data/homography]
        [--model models/keypoint_net.pt] [--config config/train_finetune_320.yaml] [--steps 1000] [--eval-every 500]
        [--batch 8] [--lr 3e-4] [--threads 1] --out runs/location_head

Everything but the location head (``loc_a``, ``loc_b``) is frozen, so a step costs one forward pass of the encoder
without gradients plus the head's backward pass. The head is trained with the KP2D location loss alone (warped
source keypoints against their nearest target keypoints, under ``loss.match_threshold_px``) on the training
pairs of ``--config`` (320x240 crops, its homographies and photometric augmentation). The starting weights and
every ``--eval-every`` steps are scored on the Oxford pairs at 320x240/top-300 (``kp2d eval-homography``'s
protocol); each snapshot is written to OUT as a weights file, the learning curve to OUT/curve.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared/data/train_images"))
    p.add_argument("--homography", default=str(REPO.parent / "shared/data/homography"))
    p.add_argument("--model", default=str(REPO / "models" / "keypoint_net.pt"))
    p.add_argument("--config", default=str(REPO / "config" / "train_finetune_320.yaml"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from kp2d_ros.config import TrainConfig, load_config
    from kp2d_ros.eval.homography import evaluate_homography
    from kp2d_ros.networks.keypoint_net import KeyPointNet, KeyPointNetOutput, preprocess
    from kp2d_ros.networks.weights import save_network
    from kp2d_ros.training.dataset import PairSampler, list_images
    from kp2d_ros.training.losses import associate, location_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, TrainConfig)
    net = KeyPointNet.from_file(args.model).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    head = list(net.loc_a.parameters()) + list(net.loc_b.parameters())
    for q in head:
        q.requires_grad_(True)
    optimizer = torch.optim.Adam(head, lr=args.lr)
    w, h = cfg.resolution
    sampler = PairSampler(list_images(args.data), w, h, cfg.homography, cfg.augmentation, args.seed)

    def keypoints(batch: torch.Tensor) -> KeyPointNetOutput:
        """Scores (frozen) and keypoints with the location head's gradient, for (B, 3, H, W) images in [0, 1]."""
        with torch.no_grad():
            image = net.pad(preprocess(batch, net.config))
            cells, _ = net.encode(image)
            scores = torch.sigmoid(net.score_b(net.score_a(cells)))
        net.loc_a.train()  # its BatchNorm follows the batches, as in training
        size = tuple(batch.shape[-2:])
        return KeyPointNetOutput(scores, net.locate(net.loc_b(net.loc_a(cells)), size), None, size,
                                 tuple(image.shape[-2:]))

    curve = []

    def evaluate(step: int, loss: float | None) -> None:
        net.eval()
        path = save_network(net, out / f"keypoint_net_step{step}.pt", probe="location head only", step=step)
        s = evaluate_homography(args.homography, ["kp2d"], (320, 240), 300, str(path), "cpu")["kp2d"]
        row = {"step": step, "pairs_seen": step * args.batch, "train_loss": loss, "repeatability": s.repeatability,
               "localization_error": s.localization_error, "c1": s.c1, "c3": s.c3, "c5": s.c5,
               "matching_score": s.matching_score}
        curve.append(row)
        (out / "curve.json").write_text(json.dumps({"settings": vars(args), "curve": curve}, indent=2) + "\n")
        print(json.dumps(row), flush=True)

    evaluate(0, None)
    start, smooth = time.perf_counter(), None
    for step in range(1, args.steps + 1):
        batch = sampler.batch(args.batch, step)
        a = associate(keypoints(batch["source"]), keypoints(batch["target"]), batch["H"], cfg.loss.border_px)
        loss = location_loss(a, cfg.loss.match_threshold_px)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        if step % 50 == 0:
            print(f"step {step}: location loss {smooth:.4f} px, {time.perf_counter() - start:.0f} s", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step, smooth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
