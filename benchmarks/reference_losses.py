"""The reference's (mmsegmentation 1.2.2) training losses on a saved batch, with every dropout off.

    REFERENCE_PYTHON benchmarks/reference_losses.py SHORT BATCH.npz [W.pth]    # prints one JSON object

Run by ``side_by_side.py`` with the reference's venv. ``BATCH.npz`` is the batch ``ref_bench.py
train`` saved (``x``, ``labels``). ``ref_bench.py`` turns off ``nn.Dropout`` and drop-path but not
the decode and auxiliary heads' ``nn.Dropout2d`` (ratio 0.1), so the losses it saves depend on
random dropout masks; here every ``_DropoutNd`` is off, and the model is ``reference_bench.build``'s
(the reference's initialisation, or the weights ``W.pth``), so the losses are deterministic and comparable.
"""
import json
import sys

import numpy as np
import torch

from no_dropout import dropout_off  # beside this file
from reference_bench import build  # beside this file: ref_bench.build with given weights
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample


def main() -> None:
    short, batch_file = sys.argv[1], sys.argv[2]
    weights = sys.argv[3] if len(sys.argv) > 3 else None
    batch = np.load(batch_file)
    model = build(short, weights).train()
    dropout_off(model)
    x, labels = torch.from_numpy(batch["x"]), torch.from_numpy(batch["labels"])
    height, width = x.shape[-2:]
    samples = []
    for i in range(x.shape[0]):
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width)))
        sample.gt_sem_seg = PixelData(data=labels[i:i + 1])
        samples.append(sample)
    with torch.no_grad():
        losses = {k: float(v) for k, v in model.loss(x, samples).items() if "loss" in k}
    losses["loss"] = sum(losses.values())
    print(json.dumps(losses))


if __name__ == "__main__":
    main()
