"""Self-supervised KP2D training loop: homography pairs -> KeyPointNet + IO-Net -> losses -> Adam.

Runs on CPU or CUDA (AMP on CUDA), and under ``torchrun`` (DDP when ``WORLD_SIZE > 1``; rank 0
logs and checkpoints). Checkpoints are written atomically (tmp file + ``os.replace``) and hold
everything a resume needs: both networks, their weight averages (``optim.ema_decay``), optimiser, scheduler, step
and every RNG state.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from kp2d_ros.config import TrainConfig, dump_config, from_dict, to_dict
from kp2d_ros.errors import ModelError
from kp2d_ros.networks.io_net import IONet
from kp2d_ros.networks.keypoint_net import KeyPointNet, preprocess
from kp2d_ros.networks.weights import read_weights, save_network
from kp2d_ros.runtime import cpu_has_native_bf16
from kp2d_ros.training.dataset import PairSampler, list_images
from kp2d_ros.training.losses import associate, descriptor_loss, io_loss, location_loss, score_loss

CHECKPOINT = "checkpoint.pt"


@dataclass
class StepResult:
    """Losses of one optimisation step (floats) and the running step number."""

    step: int
    losses: dict[str, float] = field(default_factory=dict)


def compute_losses(keypoint_net, io_net, batch: dict[str, torch.Tensor], cfg: TrainConfig, use_io: bool = True
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted KP2D loss of one batch.

    Parameters
    ----------
    batch : {"source": (B, 3, H, W) in [0, 1], "target": same, "H": (B, 3, 3) source -> target}.

    Returns
    -------
    (total loss scalar tensor, {name: float} of every term)
    """
    kcfg, lcfg = keypoint_net_config(keypoint_net), cfg.loss
    source = keypoint_net(preprocess(batch["source"], kcfg, batch["source"].device))
    target = keypoint_net(preprocess(batch["target"], kcfg, batch["target"].device))
    a = associate(source, target, batch["H"], lcfg.border_px)
    terms = {
        "location": location_loss(a, lcfg.match_threshold_px),
        "descriptor": descriptor_loss(source, target, a, lcfg.descriptor_margin, lcfg.relax_radius_px),
        "score": score_loss(a, lcfg.match_threshold_px),
    }
    weights = {"location": lcfg.location_weight, "descriptor": lcfg.descriptor_weight, "score": lcfg.score_weight}
    extra: dict[str, float] = {}
    if use_io and lcfg.io_weight > 0:
        terms["io"], extra = io_loss(io_net, source, target, batch["H"], a, lcfg.io_top_k, lcfg.match_threshold_px)
        weights["io"] = lcfg.io_weight
    total = sum(weights[k] * v for k, v in terms.items())
    with torch.no_grad():
        repeat = ((a.distance < 3.0) & a.valid).float().sum() / a.valid.float().sum().clamp(min=1)
    logs = {k: float(v.detach()) for k, v in terms.items()}
    logs.update(extra, total=float(total.detach()), repeat3px=float(repeat))
    return total, logs


def keypoint_net_config(model):
    return (model.module if hasattr(model, "module") else model).config


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda requested but CUDA is not available")
    return torch.device(name)


class Trainer:
    """Owns networks, optimiser, data sampler and the run directory.

    Parameters
    ----------
    cfg : validated training config.
    data_dir : image folder (searched recursively).
    out_dir : run directory (config.yaml, metrics.jsonl, loss.png, checkpoint.pt, weights).
    resume : continue from ``out_dir/checkpoint.pt``.
    """

    def __init__(self, cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, resume: bool = False):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.device = resolve_device(cfg.device)
        if self.world > 1:
            import torch.distributed as dist

            if self.device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", 0))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.seed = cfg.seed + self.rank
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)

        self.keypoint_net = KeyPointNet(cfg.keypoint_net).to(self.device)
        self.io_net = IONet(cfg.io_net).to(self.device)
        params = list(self.keypoint_net.parameters()) + list(self.io_net.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        step_size = cfg.optim.lr_decay_steps or 10**12
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size, cfg.optim.lr_decay_gamma)
        # mixed precision, fp32 master weights: bf16 on a GPU that has it (no loss scaling, no fp16 overflow),
        # else fp16 with loss scaling; on the CPU bf16 where the CPU has it natively
        cuda = self.device.type == "cuda"
        self.use_amp = cfg.amp and (cuda or cpu_has_native_bf16())
        fp16 = cuda and not torch.cuda.is_bf16_supported()
        self.amp_dtype = torch.float16 if fp16 else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and fp16)
        w, h = cfg.resolution
        self.sampler = PairSampler(list_images(data_dir), w, h, cfg.homography, cfg.augmentation, self.seed,
                                   cfg.num_workers)
        self.step = 0
        self.history: list[dict] = []
        # with loader workers, the next step's batch is drawn while this step runs (a pure function of
        # (seed, step), so prefetching changes no batch)
        self._prefetcher = None
        self._prefetched: tuple[int, object] | None = None
        if cfg.num_workers > 0:
            from concurrent.futures import ThreadPoolExecutor

            self._prefetcher = ThreadPoolExecutor(1)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.kp_model = DDP(self.keypoint_net, device_ids=ids)
            self.io_model = DDP(self.io_net, device_ids=ids)
        else:
            self.kp_model, self.io_model = self.keypoint_net, self.io_net
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self._ema_state: dict | None = None
        if resume:
            self.load_checkpoint(self.out / CHECKPOINT)
        else:
            self.load_init_weights()
        # weight averages (optim.ema_decay), started from the weights the run starts from
        self.ema: dict[str, torch.optim.swa_utils.AveragedModel] = {}
        if cfg.optim.ema_decay > 0:
            avg = torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.optim.ema_decay)
            for name, net in (("keypoint_net", self.keypoint_net), ("io_net", self.io_net)):
                self.ema[name] = torch.optim.swa_utils.AveragedModel(net, multi_avg_fn=avg, use_buffers=True)
                if self._ema_state and name in self._ema_state:
                    self.ema[name].load_state_dict(self._ema_state[name])
                else:
                    self.ema[name].update_parameters(net)  # the first update copies
        self._ema_state = None  # loaded into the averages (or unused): not kept beside them
        if self.rank == 0:  # the effective config (a resume may override e.g. augmentation)
            dump_config(cfg, self.out / ("config.yaml" if not resume else f"config.resume{self.step}.yaml"), ros=False)

    # ---------------------------------------------------------------------------------------
    def train_step(self) -> StepResult:
        """One optimisation step on a fresh batch."""
        self.kp_model.train()
        self.io_model.train()
        batch = self._batch(self.step)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        use_io = self.step >= self.cfg.loss.io_start_step
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            total, logs = compute_losses(self.kp_model, self.io_model, batch, self.cfg, use_io)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                list(self.keypoint_net.parameters()) + list(self.io_net.parameters()), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        for name, avg in self.ema.items():
            avg.update_parameters(getattr(self, name))
        self.step += 1
        if not math.isfinite(logs["total"]):
            raise ModelError(f"training diverged at step {self.step}: loss {logs['total']}")
        return StepResult(self.step, logs)

    def _batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of ``step`` (prefetched when loader workers are on) and the next one started."""
        pending, self._prefetched = self._prefetched, None
        if pending is not None and pending[0] == step:
            batch = pending[1].result()
        else:
            batch = self.sampler.batch(self.cfg.batch_size, step)
        if self._prefetcher is not None:
            self._prefetched = (step + 1, self._prefetcher.submit(self.sampler.batch, self.cfg.batch_size, step + 1))
        return batch

    def train(self, steps: int | None = None, callback: Callable[[StepResult], None] | None = None) -> Path:
        """Train until ``steps`` (default ``cfg.steps``) total steps; returns the checkpoint path."""
        steps = steps or self.cfg.steps
        last_ckpt = time.monotonic()
        window: list[dict] = []
        t0 = time.monotonic()
        while self.step < steps:
            result = self.train_step()
            window.append(result.losses)
            if self.step % self.cfg.log_every == 0 or self.step == steps:
                row = {k: float(np.mean([w[k] for w in window if k in w])) for k in window[-1]}
                row.update(step=self.step, lr=self.optimizer.param_groups[0]["lr"],
                           seconds_per_step=(time.monotonic() - t0) / len(window), time=time.time())
                t0 = time.monotonic()
                window = []
                self.log(row)
            minutes = self.cfg.checkpoint_minutes
            if (self.step % self.cfg.checkpoint_every == 0 or self.step == steps
                    or (minutes > 0 and time.monotonic() - last_ckpt > 60 * minutes)):
                self.save_checkpoint()
                last_ckpt = time.monotonic()
            if callback is not None:  # after the step's log row: a callback may stop the run (KeyboardInterrupt)
                callback(result)
        return self.out / CHECKPOINT

    # ---------------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        self.history.append(row)
        if self.rank != 0:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def save_checkpoint(self) -> Path | None:
        """Atomically write checkpoint.pt, the plain weight files and the loss plot (rank 0)."""
        if self.rank != 0:
            return None
        state = {
            "step": self.step,
            "keypoint_net": self.keypoint_net.state_dict(),
            "io_net": self.io_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": {name: avg.state_dict() for name, avg in self.ema.items()},
            "config": to_dict(self.cfg),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy_global": _np_state(),
                "python": _py_state(),
            },
        }
        path = self.out / CHECKPOINT
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        meta = {"step": self.step, "train_resolution": list(self.cfg.resolution), "seed": self.cfg.seed}
        if self.ema:
            meta["ema_decay"] = self.cfg.optim.ema_decay
        for name in ("keypoint_net", "io_net"):  # the averages when optim.ema_decay is on
            net = self.ema[name].module if name in self.ema else getattr(self, name)
            save_network(net, self.out / f"{name}.pt", **meta)
        self.plot()
        return path

    def load_init_weights(self) -> None:
        """Fine-tuning: start from ``cfg.init_keypoint_net`` / ``cfg.init_io_net`` (weights files) when set.

        Raises
        ------
        ModelError
            missing/corrupt file or weights of another architecture than ``cfg``.
        """
        for path, net in ((self.cfg.init_keypoint_net, self.keypoint_net), (self.cfg.init_io_net, self.io_net)):
            if not path:
                continue
            state, _ = read_weights(path)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise ModelError(f"{path}: does not fit {type(net).__name__} of this config: "
                                 f"{str(e).splitlines()[0]}") from None

    def load_checkpoint(self, path: Path) -> None:
        """Restore networks, optimiser, scheduler, step and RNG states.

        Raises
        ------
        ModelError
            missing, corrupt or mismatched checkpoint.
        """
        if not path.is_file():
            raise ModelError(f"no checkpoint to resume from: {path}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.keypoint_net.load_state_dict(state["keypoint_net"])
            self.io_net.load_state_dict(state["io_net"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            self._ema_state = state.get("ema") or None  # a run without averages resumed with them starts them here
            rng = state["rng"]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            _set_np_state(rng["numpy_global"])
            _set_py_state(rng["python"])
            self.step = int(state["step"])
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - corrupt/mismatched file
            raise ModelError(f"cannot resume from {path}: {type(e).__name__}: {e}") from None
        saved = from_dict(TrainConfig, state.get("config"))
        if to_dict(saved.keypoint_net) != to_dict(self.cfg.keypoint_net):
            raise ModelError(f"{path}: checkpoint was trained with another keypoint_net config")
        metrics = self.out / "metrics.jsonl"
        if metrics.is_file():
            rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            kept = [r for r in rows if r["step"] <= self.step]
            self.history = kept
            if len(kept) != len(rows):  # drop rows logged after the checkpoint (they will be redone)
                metrics.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def plot(self) -> None:
        """loss.png: every loss term against the step."""
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        steps = [r["step"] for r in self.history]
        for key in ("total", "location", "descriptor", "score", "io"):
            ys = [r.get(key, float("nan")) for r in self.history]
            ax.plot(steps, ys, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = self.out / "loss.tmp.png"
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, self.out / "loss.png")


def _np_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
            "cached": cached}


def _set_np_state(s):
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"]))


def _py_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_py_state(s):
    random.setstate((s["version"], tuple(s["internal"]), s["gauss"]))
