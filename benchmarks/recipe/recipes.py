"""The recipes tried for the no-argument ``yolo-attention ablate`` (see docs/ablate-recipe.md).

Names start with a two-digit round number; within a round the recipes differ from a
reference in one or two settings, so each comparison isolates a lever.
"""

from __future__ import annotations

from harness import Recipe, Stage

# Today's default (yolo_attention/ablate.py before this work): 4 classes, light clutter.
TODAY_DATA = dict(n_train=160, n_val=64, imgsz=128, classes="circle,square,triangle,star", clutter=0.5, max_objects=5)
TODAY_ARGS = dict(optimizer="SGD", lr0=0.02, warmup_epochs=1, mosaic=0.0)

RECIPES: dict[str, Recipe] = {}


def add(r: Recipe) -> None:
    assert r.name not in RECIPES, r.name
    RECIPES[r.name] = r


# ---- round 0: today's default, from scratch, one variant
add(Recipe("r00-today", "today's default (25 epochs, SGD 0.02, 160 images)", TODAY_DATA, Stage(25, TODAY_ARGS)))

# ---- round 1: the optimizer, on 5x more (fresh) images for 10 epochs (8000 image-steps)
R1_DATA = {**TODAY_DATA, "n_train": 800, "n_val": 160}
add(Recipe("r01-sgd02", "SGD lr0 0.02 (today's)", R1_DATA, Stage(10, TODAY_ARGS)))
add(Recipe("r01-adamw002", "AdamW lr0 0.002", R1_DATA, Stage(10, {**TODAY_ARGS, "optimizer": "AdamW", "lr0": 0.002})))
add(Recipe("r01-adamw005", "AdamW lr0 0.005", R1_DATA, Stage(10, {**TODAY_ARGS, "optimizer": "AdamW", "lr0": 0.005})))
add(Recipe("r01-adamw002-b8", "AdamW lr0 0.002, batch 8", R1_DATA, Stage(10, {**TODAY_ARGS, "optimizer": "AdamW", "lr0": 0.002}), batch=8))

# ---- round 2: ultralytics accumulates gradients up to a nominal batch of nbs=64, so at batch 16
# it steps the optimizer every 4th batch (r00: 62 steps in 25 epochs). nbs=batch steps every batch.
R2_ARGS = dict(optimizer="AdamW", warmup_epochs=1, warmup_bias_lr=0.0, mosaic=0.0, nbs=16)
add(Recipe("r02-adamw001", "AdamW lr0 0.001, a step per batch (nbs 16)", R1_DATA, Stage(10, {**R2_ARGS, "lr0": 0.001})))
add(Recipe("r02-adamw003", "AdamW lr0 0.003, a step per batch (nbs 16)", R1_DATA, Stage(10, {**R2_ARGS, "lr0": 0.003})))

# ---- round 3: from r02-adamw001 (lr 0.001 beat 0.003 over 10 epochs), one lever each:
# batch 8 (twice the optimizer steps for the same images) and objects at least 10 % of the side.
R3_ARGS = {**R2_ARGS, "lr0": 0.001}
add(Recipe("r03-b8", "r02-adamw001 at batch 8 (nbs 8): 1000 steps", R1_DATA, Stage(10, {**R3_ARGS, "nbs": 8}), batch=8))
R3_EASY = {**R1_DATA, "min_size": 0.1}
add(Recipe("r03-big", "r02-adamw001, objects 10-45 % of the side", R3_EASY, Stage(10, R3_ARGS)))

# ---- round 4: both levers of round 3 (batch 8, objects 10-45 %) and the two-stage protocol: the
# baseline pretrained once (lr 1e-3 -> 2e-4), then every variant, the baseline included, fine-tuned
# one epoch from that checkpoint (lr 2e-4, attention inserted as the identity). save=False: ultralytics
# otherwise writes two checkpoints every epoch (~2.4 CPU s each time, measured).
VARIANTS = ("none", "se", "a2", "bam", "biformer")
R4_PRE = Stage(9, {**R3_ARGS, "nbs": 8, "lrf": 0.2, "save": False})
R4_FT = Stage(1, {**R3_ARGS, "nbs": 8, "lr0": 2e-4, "warmup_epochs": 0, "save": False})
add(Recipe("r04-two-stage", "b8, objects 10-45 %, 9 epochs + 1 fine-tune epoch per variant", R3_EASY, R4_PRE, R4_FT,
           VARIANTS, batch=8))
add(Recipe("r04-two-stage-2t", "r04-two-stage with 2 torch threads (CPU cost as users run it)", R3_EASY, R4_PRE, R4_FT,
           VARIANTS, batch=8, threads=2))

# ---- round 5: data are cheap to generate (~0.01 CPU s an image at 128 px, against ~0.05 to train on
# one), so fresh images can replace augmentation: 2000 images seen 4 times, no HSV/scale/translate
# jitter (which also skips the affine warp in the loader); left-right flips kept.
R5_DATA = {**R3_EASY, "n_train": 2000}
NO_AUG = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, scale=0.0, translate=0.0)
add(Recipe("r05-fresh-noaug", "b8, objects 10-45 %, 2000 images x 4 epochs, no jitter", R5_DATA,
           Stage(4, {**R3_ARGS, "nbs": 8, "warmup_epochs": 0.4, **NO_AUG}), batch=8))  # 100 warm-up steps as r03

# ---- round 6: r05 reached 0.278 in 8000 image-steps (419 CPU s) and still climbs; two ways to more
# learning per CPU second: smaller images (112 px: ~0.77x the pixels) with more of them, and more
# labelled objects per image (up to 8, the generator's default: more positives per step, same cost).
R5_PRE = Stage(4, {**R3_ARGS, "nbs": 8, "warmup_epochs": 0.4, **NO_AUG})
add(Recipe("r06-112px", "r05 at 112 px, 2500 images x 4 epochs", {**R5_DATA, "n_train": 2500, "imgsz": 112},
           Stage(4, {**R5_PRE.args, "warmup_epochs": 0.32}), batch=8, imgsz=112))
add(Recipe("r06-8objects", "r05 with up to 8 objects an image", {**R5_DATA, "max_objects": 8}, R5_PRE, batch=8))

# ---- fine-tuning protocol (from r05's pretrained checkpoint). r04's fine-tune (one epoch, lr 2e-4)
# left every gate at |gamma| ~ 0.001: the attention was hardly used, and A2 (zero-initialised
# reconstruction inside an identity gate) had gamma exactly 0 (no gradient to either; zero_init=False
# fixes it). Four short epochs (250 images each) so that ultralytics' per-epoch schedule anneals.
FT_ARGS = {**R3_ARGS, "nbs": 8, "lr0": 5e-4, "warmup_epochs": 0, "fraction": 0.125, "save": False, **NO_AUG}
add(Recipe("f1-plain", "fine-tune 4 x 250 images, lr 5e-4 for all", R5_DATA, R5_PRE, Stage(4, FT_ARGS),
           ("none", "se"), batch=8, init="r05-fresh-noaug"))
add(Recipe("f1-boost10", "fine-tune 4 x 250 images, lr 5e-4, attention at 10x", R5_DATA, R5_PRE,
           Stage(4, FT_ARGS, new_lr_mult=10.0), ("se", "a2:zero_init=False"), batch=8, init="r05-fresh-noaug"))
add(Recipe("r06-5epochs", "r05 for 5 epochs (10000 image-steps)", R5_DATA,
           Stage(5, {**R3_ARGS, "nbs": 8, "warmup_epochs": 0.4, **NO_AUG}), batch=8))
add(Recipe("r06-easy", "r05 with clutter 0.25 and objects 15-45 % of the side", {**R5_DATA, "clutter": 0.25, "min_size": 0.15},
           R5_PRE, batch=8))
