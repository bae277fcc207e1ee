#!/usr/bin/env bash
# GPU check for kp2d_ros, for the day a GPU machine is available (issue 10, item 6). Under 8 minutes in all:
#
#   1. install: a venv (system site packages visible), torch==2.13.0 unless that version is already there,
#      then `pip install -e .` (NO_INSTALL=1 instead runs the repo with the machine's own torch);
#   2. training, for the time left after the benches' reserve (BENCH_RESERVE):
#      - the paper-width network (`keypoint_net.width_multiplier=1.0`, config/train.yaml) at 320x240 on CUDA with
#        AMP, starting from the best paper-width weights (INIT_KP) or resuming the run in WORK when one is there;
#      - beside it on the same GPU (HALF=1, the default): the shipped half-width network (INIT_HALF) fine-tuned
#        further with the stage-3 recipe (HALF_CONFIG), its weights copied every SNAP_S seconds;
#      both stopped with SIGINT, which saves a checkpoint;
#   3. speed: `kp2d bench --device cuda --precision half` (fp16) of untrained KeyPointNets of width 0.5 and 1.0
#      (`--untrained-width`) at 320x240 and 640x480, REPEAT runs of FRAMES frames each (defaults 2 x 100); without
#      pycolmap on the machine the bundle-adjustment window is off (`--set backend.window=0`);
#   4. when HOMOGRAPHY is a folder: `kp2d eval-homography` of the trained weights (network alone, 320x240/top-300).
#
# Every stage runs under `timeout`; the whole script keeps to BUDGET_S seconds (default 450).
#
# Usage:  scripts/gpu_check.sh [OUT_DIR] [--dry-run]      (OUT_DIR default: $OUT, else ./out/gpu_check)
#
# On this workplace's lent GPU machine (no network; the training images travel in the working tree, 64 MiB in all):
#   here:   python scripts/pack_train_images.py ../shared/data/train_images gpu_data/train_images   (30 MB)
#           echo /gpu_data/ >> .git/info/exclude
#   device: run(carry=["gpu_data"], timeout_s=595, command='NO_INSTALL=1 DATA=gpu_data/train_images BUDGET_S=540
#           BATCH=16 bash scripts/gpu_check.sh "$OUT"')
#
# Output (at most 8 flat files, each well under 16 MiB: what a lent machine sends back):
#   OUT_DIR/gpu_check.json        summary: machine, stage status and seconds, FPS of every bench, both runs'
#                                 steps / seconds per step / last losses, Oxford metrics of the trained weights
#   OUT_DIR/keypoint_net_w1.pt    trained paper-width KeyPointNet (bfloat16, like models/keypoint_net_paper_width.pt)
#   OUT_DIR/io_net_w1.pt          the IO-Net trained with it
#   OUT_DIR/w05_snapshots.tar     up to 4 half-width snapshots (keypoint_net_w05_stepN.pt + io_net_w05_stepN.pt,
#                                 bfloat16), evenly spread over the run
#   OUT_DIR/reports.tar           the `kp2d bench` reports (bench_w{0.5,1.0}_{320x240,640x480}.json), both runs'
#                                 metrics.jsonl / config.yaml / loss.png
#   OUT_DIR/gpu_check.log         everything the stages printed
#
# Environment (all optional):
#   DATA        training images (default ../shared/data/train_images beside the repo); training is skipped without
#   HOMOGRAPHY  Oxford/HPatches folder for step 4 (default ../shared/data/homography; skipped when absent)
#   INIT_KP     KeyPointNet weights to start from (default models/keypoint_net_paper_width.pt); INIT_IO likewise
#               (default models/io_net.pt)
#   HALF=0      no half-width run; HALF_CONFIG, HALF_BATCH (16), INIT_HALF (models/keypoint_net.pt),
#               INIT_HALF_IO (models/io_net.pt), SNAP_S (75) set it up
#   WORK        run folder for checkpoints with optimiser state, which never go to OUT_DIR (default /tmp/kp2d_gpu_work)
#   VENV        venv folder (default /tmp/kp2d_gpu_venv); PYTHON the interpreter that creates it (default python3)
#   NO_INSTALL=1  no venv, no pip: run the repo with PYTHON on PYTHONPATH (machines without network access)
#   BUDGET_S    total seconds (default 450); BATCH paper-width batch size (default 8); WORKERS loader threads per
#               run (6); BENCH_RESERVE (150 s); FRAMES, REPEAT per bench
#
# --dry-run: what runs without a GPU: no install (as NO_INSTALL=1), CPU instead of CUDA, 2 frames per bench
# (up to 300 s each, budget BUDGET_S_DRY=1500 s), 2 training steps of each run at 160x128 with batch 1 and no
# eval; checks that every command line, the weights export and the summary work.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
OUT_DIR=""
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,53p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg" >&2; exit 2 ;;
        *) OUT_DIR="$arg" ;;
    esac
done
OUT_DIR="${OUT_DIR:-${OUT:-$REPO/out/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
DATA="${DATA:-$REPO/../shared/data/train_images}"
HOMOGRAPHY="${HOMOGRAPHY:-$REPO/../shared/data/homography}"
INIT_KP="${INIT_KP:-$REPO/models/keypoint_net_paper_width.pt}"
INIT_IO="${INIT_IO:-$REPO/models/io_net.pt}"
WORK="${WORK:-/tmp/kp2d_gpu_work}"
VENV="${VENV:-/tmp/kp2d_gpu_venv}"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-450}"
BATCH="${BATCH:-8}"
WORKERS="${WORKERS:-6}"
HALF="${HALF:-1}"
HALF_CONFIG="${HALF_CONFIG:-config/train_finetune_320.yaml}"
HALF_BATCH="${HALF_BATCH:-16}"
INIT_HALF="${INIT_HALF:-$REPO/models/keypoint_net.pt}"
INIT_HALF_IO="${INIT_HALF_IO:-$REPO/models/io_net.pt}"
SNAP_S="${SNAP_S:-75}"
NO_INSTALL="${NO_INSTALL:-0}"
LOG="$OUT_DIR/gpu_check.log"
STAGES="$WORK/stages.tsv"  # name, exit status, seconds
T0=$SECONDS

BENCH_RESERVE="${BENCH_RESERVE:-150}"  # seconds kept for the four benches after the training
if [ "$DRY" = 1 ]; then
    NO_INSTALL=1; DEVICE=cpu; FRAMES=2; WARMUP=1; REPEAT=1; TRAIN_RES="[160,128]"; BATCH=1; HALF_BATCH=1; WORKERS=0
    BENCH_MAX=300; BUDGET_S="${BUDGET_S_DRY:-1500}"; SNAP_S=5  # a CPU is slow at 640x480 and width 1.0
else
    DEVICE=cuda; FRAMES="${FRAMES:-100}"; WARMUP=10; REPEAT="${REPEAT:-2}"; TRAIN_RES="[320,240]"; BENCH_MAX=45
fi
mkdir -p "$WORK"
: > "$STAGES"
: > "$LOG"
cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

log() { echo "[gpu_check $((SECONDS - T0)) s] $*" | tee -a "$LOG" >&2; }
left() { echo $((BUDGET_S - (SECONDS - T0))); }

# stage NAME MAX_SECONDS [timeout options --] COMMAND...: run COMMAND under timeout (never past the budget)
stage() {
    local name="$1" max="$2"; shift 2
    local sig=TERM
    if [ "$1" = "--int" ]; then sig=INT; shift; fi
    local t; t=$(left)
    [ "$t" -gt "$max" ] && t=$max
    if [ "$t" -lt 5 ]; then
        log "$name: skipped, budget spent"; printf '%s\tskipped\t0\n' "$name" >> "$STAGES"; return 124
    fi
    log "$name (<= $t s): $*"
    local start=$SECONDS rc
    timeout --signal="$sig" --kill-after=30 "$t" "$@" >> "$LOG" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$STAGES"
    log "$name: exit $rc after $((SECONDS - start)) s"
    return $rc
}

# ---------------------------------------------------------------------------------------------------------
# 1. install
# ---------------------------------------------------------------------------------------------------------
if [ "$NO_INSTALL" = 1 ]; then
    PY="$PYTHON"
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    log "install: skipped (NO_INSTALL or --dry-run); using $PY with PYTHONPATH=$REPO"
else
    install() {
        set -e
        [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")'; then
            "$VENV/bin/python" -m pip install -q torch==2.13.0
        fi
        "$VENV/bin/python" -m pip install -q -e "$REPO"
    }
    export VENV PYTHON REPO
    stage install 270 bash -c "$(declare -f install); install" || log "install failed; see $LOG"
    PY="$VENV/bin/python"
fi
"$PY" - >> "$LOG" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
CUDA_OK=1
if [ "$DRY" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    log "no usable CUDA device (see $LOG): the speed and training stages would run on the CPU; skipping them"
    printf 'cuda\tnot available\t0\n' >> "$STAGES"
    CUDA_OK=0
fi

# ---------------------------------------------------------------------------------------------------------
# 2. training for the time that is left after the reserve for the benches and the summary:
#    the paper-width network (config/train.yaml at TRAIN_RES) and, beside it on the same GPU when HALF=1, the
#    shipped half-width network fine-tuned further with the stage-3 recipe (HALF_CONFIG); the half-width run's
#    weights are copied every SNAP_S seconds (the files the trainer writes at each checkpoint)
# ---------------------------------------------------------------------------------------------------------
RUN="$WORK/train_w1"
HALF_RUN="$WORK/train_w05"
SNAPS="$WORK/snapshots_w05"
if [ "$CUDA_OK" = 1 ] && [ -d "$DATA" ]; then
    # --set takes every KEY=VALUE that follows it: all overrides go in one list, last
    sets=(keypoint_net.width_multiplier=1.0 "device=$DEVICE" amp=true "resolution=$TRAIN_RES" "batch_size=$BATCH"
          "num_workers=$WORKERS" num_threads=2 checkpoint_minutes=1.0 log_every=10)
    if [ -f "$RUN/checkpoint.pt" ]; then
        start=(--resume)
        log "training: resuming $RUN/checkpoint.pt"
    else
        start=()
        sets+=("init_keypoint_net=$INIT_KP")
        [ -f "$INIT_IO" ] && sets+=("init_io_net=$INIT_IO")
        log "training: starting from $INIT_KP"
    fi
    if [ "$DRY" = 1 ]; then steps=(--steps 2); else steps=(--steps 1000000); fi
    reserve=$(( BENCH_RESERVE + 40 ))
    [ -d "$HOMOGRAPHY" ] && [ "$DRY" = 0 ] && reserve=$(( reserve + 90 ))
    train_s=$(( $(left) - reserve ))
    half_pid=""
    if [ "$HALF" = 1 ] && [ "$train_s" -gt 5 ]; then
        hsets=("device=$DEVICE" amp=true "batch_size=$HALF_BATCH" "num_workers=$WORKERS" num_threads=2
               checkpoint_minutes=1.0 log_every=10)
        [ "$DRY" = 1 ] && hsets+=("resolution=$TRAIN_RES")
        if [ -f "$HALF_RUN/checkpoint.pt" ]; then
            hstart=(--resume)
        else
            hstart=()
            hsets+=("init_keypoint_net=$INIT_HALF" "init_io_net=$INIT_HALF_IO")
        fi
        mkdir -p "$SNAPS"
        log "training (half width, <= $train_s s): $HALF_CONFIG from $INIT_HALF, batch $HALF_BATCH"
        ( timeout --signal=INT --kill-after=30 "$train_s" "$PY" -m kp2d_ros.cli train --config "$HALF_CONFIG" \
              --data "$DATA" --out "$HALF_RUN" --no-progress "${steps[@]}" ${hstart[@]+"${hstart[@]}"} \
              --set "${hsets[@]}" > "$WORK/train_w05.log" 2>&1
          echo $? > "$WORK/train_w05.rc" ) &
        half_pid=$!
        half_t0=$SECONDS
        ( while kill -0 "$half_pid" 2>/dev/null; do
              sleep "$SNAP_S"
              [ -f "$HALF_RUN/keypoint_net.pt" ] && cp "$HALF_RUN/keypoint_net.pt" "$SNAPS/kp_$SECONDS.pt" \
                  && cp "$HALF_RUN/io_net.pt" "$SNAPS/io_$SECONDS.pt"
          done ) &
    fi
    stage train "$train_s" --int "$PY" -m kp2d_ros.cli train --config config/train.yaml --data "$DATA" \
        --out "$RUN" --no-progress "${steps[@]}" ${start[@]+"${start[@]}"} --set "${sets[@]}"
    if [ -n "$half_pid" ]; then
        wait "$half_pid"
        half_rc="$(cat "$WORK/train_w05.rc" 2>/dev/null)"
        printf 'train_w05\t%s\t%s\n' "${half_rc:-?}" "$((SECONDS - half_t0))" >> "$STAGES"
        log "half-width training: exit ${half_rc:-?}"
        cat "$WORK/train_w05.log" >> "$LOG"
        cp "$HALF_RUN/keypoint_net.pt" "$SNAPS/kp_final.pt" 2>/dev/null
        cp "$HALF_RUN/io_net.pt" "$SNAPS/io_final.pt" 2>/dev/null
    fi
    # weights to OUT in bfloat16 (the 5.3 M-parameter network in float32 is 21 MB); up to 4 half-width snapshots,
    # named by their training step, in one tar (OUT takes at most 8 files)
    "$PY" - "$RUN" "$OUT_DIR" "$SNAPS" >> "$LOG" 2>&1 <<'EOF'
import sys
import tarfile
from pathlib import Path

import torch


def bf16(src, dest, note):
    blob = torch.load(src, map_location="cpu", weights_only=True)
    state = blob["state_dict"]
    blob["state_dict"] = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    blob["metadata"]["stored_as"] = "bfloat16 (loaded into float32 parameters)"
    blob["metadata"]["training_command"] = note
    torch.save(blob, dest)
    print("wrote", dest, "step", blob["metadata"].get("step"))


run, out, snaps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
for name, dest in (("keypoint_net.pt", "keypoint_net_w1.pt"), ("io_net.pt", "io_net_w1.pt")):
    if (run / name).is_file():
        bf16(run / name, out / dest, "scripts/gpu_check.sh (paper width, config/train.yaml, CUDA AMP)")
    else:
        print(f"no {run / name}")
kept = {}
for kp in sorted(snaps.glob("kp_*.pt")):
    io = kp.with_name("io_" + kp.name[3:])
    try:
        step = torch.load(kp, map_location="cpu", weights_only=True)["metadata"].get("step")
        torch.load(io, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a file copied while the trainer rewrote it
        print("skipped", kp, type(e).__name__, e)
        continue
    kept[step] = (kp, io)
if kept:
    steps = sorted(kept)
    pick = sorted({steps[round(i * (len(steps) - 1) / 3)] for i in range(4)})
    with tarfile.open(out / "w05_snapshots.tar", "w") as tar:
        for step in pick:
            for src, prefix in zip(kept[step], ("keypoint_net", "io_net")):
                dest = snaps / f"{prefix}_w05_step{step}.pt"
                bf16(src, dest, "scripts/gpu_check.sh (half width, HALF_CONFIG, CUDA AMP)")
                tar.add(dest, arcname=dest.name)
    print("half-width snapshots at steps", pick)
EOF
else
    [ -d "$DATA" ] || log "training: skipped, no image folder DATA=$DATA"
    printf 'train\tskipped\t0\n' >> "$STAGES"
fi

# ---------------------------------------------------------------------------------------------------------
# 3. speed: fp16 KeyPointNet (untrained: speed only), whole pipeline on the synthetic sequence. Without
#    pycolmap (a machine where the project could not be installed) the bundle-adjustment window is off: its
#    solver runs on the CPU in any case
# ---------------------------------------------------------------------------------------------------------
if [ "$CUDA_OK" = 1 ]; then
    bench_set=()
    if ! "$PY" -c 'import pycolmap' 2>/dev/null; then
        bench_set=(--set backend.window=0)
        log "bench: no pycolmap here, so backend.window=0"
    fi
    for width in 0.5 1.0; do
        for res in 320x240 640x480; do
            stage "bench_w${width}_${res}" "$BENCH_MAX" "$PY" -m kp2d_ros.cli bench --frontend kp2d --device "$DEVICE" \
                --precision half --untrained-width "$width" --resolution "$res" --frames "$FRAMES" \
                --warmup "$WARMUP" --repeat "$REPEAT" --out "$WORK/bench_w${width}_${res}.json" \
                ${bench_set[@]+"${bench_set[@]}"}
        done
    done
fi

# ---------------------------------------------------------------------------------------------------------
# 4. the trained weights on the Oxford sets (network alone)
# ---------------------------------------------------------------------------------------------------------
if [ "$DRY" = 0 ] && [ -d "$HOMOGRAPHY" ] && [ -f "$OUT_DIR/keypoint_net_w1.pt" ]; then
    stage eval_homography 90 "$PY" -m kp2d_ros.cli eval-homography "$HOMOGRAPHY" --methods kp2d --device "$DEVICE" \
        --resolution 320x240 --top-k 300 --model "$OUT_DIR/keypoint_net_w1.pt" --out "$WORK/eval_homography.json"
fi

# ---------------------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------------------
"$PY" - "$OUT_DIR" "$WORK" "$RUN" "$DRY" "$((SECONDS - T0))" <<'EOF' 2>> "$LOG"
import json
import sys
from pathlib import Path

out, work, run = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
dry, seconds = sys.argv[4] == "1", int(sys.argv[5])
summary = {"dry_run": dry, "seconds": seconds, "stages": [], "bench": {}, "training": None, "eval_homography": None}
try:
    import torch

    summary["torch"] = torch.__version__
    summary["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except ImportError:
    summary["torch"] = None
for line in (work / "stages.tsv").read_text().splitlines():
    name, rc, s = line.split("\t")
    summary["stages"].append({"name": name, "exit": rc, "seconds": int(s)})
for f in sorted(work.glob("bench_*.json")):
    r = json.loads(f.read_text())
    summary["bench"][f.stem] = {k: r.get(k) for k in ("fps", "fps_runs", "latency_ms", "stages_ms", "device",
                                                      "precision", "resolution", "model")}
for key, folder in (("training", run), ("training_w05", work / "train_w05")):
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if rows:
            summary[key] = {"last_step": rows[-1]["step"], "rows": len(rows),
                            "seconds_per_step_last": rows[-1].get("seconds_per_step"),
                            "last": rows[-1], "first": rows[0]}
ev = work / "eval_homography.json"
if ev.is_file():
    r = json.loads(ev.read_text())["kp2d"]
    summary["eval_homography"] = {k: r[k] for k in ("repeatability", "localization_error", "c1", "c3", "c5",
                                                    "matching_score", "num_pairs")}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
# the bench reports and both runs' learning curves and effective configs, in one tar
import tarfile

with tarfile.open(out / "reports.tar", "w") as tar:
    for f in sorted(work.glob("bench_*.json")) + [work / "eval_homography.json"]:
        if f.is_file():
            tar.add(f, arcname=f.name)
    for folder in (run, work / "train_w05"):
        for name in ("metrics.jsonl", "config.yaml", "loss.png"):
            if (folder / name).is_file():
                tar.add(folder / name, arcname=f"{folder.name}_{name}")
print(json.dumps({k: summary[k] for k in ("seconds", "stages", "gpu")}))
EOF
log "done in $((SECONDS - T0)) s; summary in $OUT_DIR/gpu_check.json"
