"""train.calibrate's pseudo-masks: where no annotated mask exists, the CT's blood-density regions on positive slices."""

import numpy as np

from ichdemo.data.series import MASK_ANY, SliceStackDataset
from ichdemo.data.sources import open_source
from ichdemo.evaluation import Predictions
from train.calibrate import pseudo_masks


def test_pseudo_masks_find_the_phantom_lesions_on_positive_slices_only():
    src = open_source("phantom:2:5", phantom_shape="12x128x128", window="subdural")
    data = SliceStackDataset(src.series, 128, cache=False)
    items = list(range(len(data)))
    truth = np.stack([data[k]["mask"].numpy() for k in items])
    pred = Predictions(items, np.zeros((len(items), 5), np.float32), data.labels, None, None, data.patients)
    masks = pseudo_masks(data, pred, "subdural")
    positive = data.labels.any(1)
    assert set(np.unique(masks)) <= {0, MASK_ANY}
    assert not masks[~positive].any()  # nothing on slices labelled negative
    hit, lesion = (masks > 0) & (truth > 0), truth > 0
    dice = 2 * hit.sum() / ((masks > 0).sum() + lesion.sum())
    assert dice > 0.75, dice  # measured 0.84
