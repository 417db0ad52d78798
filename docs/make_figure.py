"""Draw the README's picture, docs/images/edits.png, from the shipped testbed model (about a minute of CPU time).

1. Sample 64 faces (seeds 0-63, 50 DDIM steps, eta 1) and record h_{T:1}.
2. Score them with the testbed annotator; keep the samples it calls faces (face probability > 0.5).
3. eq. 11: v = mean h_{T:1} of k = 16 positives - mean of k = 16 negatives: for smile the highest and lowest
   scores, for hat k drawn from each side of 0.5 (a binary attribute; ``hspace.directions.top_bottom``).
4. Edit 3 other samples (seeds 1000-1002) along each direction at gamma -2, -1, 0, +1, +2 (delta h_t =
   gamma v_t at every step; each sample keeps its x_T and z_t, so gamma 0 is the unedited sample), draw the
   grid, and print the annotator's mean score of each gamma column.

Run: ``.venv/bin/python docs/make_figure.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import hspace
from hspace.annotators import load_annotator
from hspace.directions import supervised_direction, top_bottom
from hspace.editing import edit_grid
from hspace.render import labeled_grid
from hspace.sampler import to_uint8

STEPS, ETA, POOL, K = 50, 1.0, 64, 16
EDIT_SEEDS = [1000, 1001, 1002]
GAMMAS = [-2.0, -1.0, 0.0, 1.0, 2.0]
THRESHOLDS = {"smile": None, "hat": 0.5}  # hat is a probability: k from each class
OUT = Path(__file__).parent / "images" / "edits.png"


def main() -> None:
    """Sample, find the two directions by eq. 11, edit, draw, and print what the annotator measures."""
    torch.set_num_threads(1)  # the testbed is small: a second thread costs more CPU than it saves
    model = hspace.load_model("testbed")
    annotator = load_annotator("testbed")
    pool = hspace.sample(model, list(range(POOL)), steps=STEPS, eta=ETA)
    assert pool.h is not None
    scores = annotator.scores_by_attribute(to_uint8(pool.images).numpy())
    faces = np.flatnonzero(scores["face"] > 0.5)
    print(f"{len(faces)} of {POOL} samples are faces", flush=True)

    directions = {}
    for attribute, threshold in THRESHOLDS.items():
        positives, negatives = top_bottom(scores[attribute][faces], K, threshold=threshold)
        directions[attribute] = supervised_direction(pool.h[faces[positives]], pool.h[faces[negatives]])
    grid = edit_grid(model, EDIT_SEEDS, directions, GAMMAS, steps=STEPS, eta=ETA)
    grid = grid.reshape(len(directions) * len(EDIT_SEEDS), len(GAMMAS), *grid.shape[2:])  # one row per seed

    for d, attribute in enumerate(directions):
        rows = grid[d * len(EDIT_SEEDS) : (d + 1) * len(EDIT_SEEDS)]
        edited = annotator.scores_by_attribute(rows.reshape(-1, *rows.shape[2:]))
        means = edited[attribute].reshape(rows.shape[:2]).mean(0)
        faces_kept = (edited["face"] > 0.5).mean()
        print(
            f"{attribute}: mean {attribute} score at gamma {GAMMAS}: {', '.join(f'{m:+.2f}' for m in means)}; "
            f"{faces_kept:.0%} of the edits are faces"
        )

    labels = [f"{attribute} {seed}" for attribute in directions for seed in EDIT_SEEDS]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    labeled_grid(grid, labels, [f"{g:+g}" for g in GAMMAS]).save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
