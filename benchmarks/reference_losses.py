"""The reference's (mmsegmentation 1.2.2) training losses on a saved batch, with every dropout off.

    REFERENCE_PYTHON benchmarks/reference_losses.py SHORT BATCH.npz     # prints one JSON object

Run by ``side_by_side.py`` with the reference's venv. ``BATCH.npz`` is the batch ``ref_bench.py
train`` saved (``x``, ``labels``). ``ref_bench.py`` turns off ``nn.Dropout`` and drop-path but not
the decode and auxiliary heads' ``nn.Dropout2d`` (ratio 0.1), so the losses it saves depend on
random dropout masks; here every ``_DropoutNd`` is off, and the model is ``ref_bench.build``'s
(the weights ``ref_bench.py export`` writes), so the losses are deterministic and comparable.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "reference"))
import ref_bench  # noqa: E402  (the reference's builder, from ../shared/reference)
from no_dropout import dropout_off  # noqa: E402  (beside this file)
from mmengine.structures import PixelData  # noqa: E402
from mmseg.structures import SegDataSample  # noqa: E402


def main() -> None:
    short, batch_file = sys.argv[1], sys.argv[2]
    batch = np.load(batch_file)
    model = ref_bench.build(short).train()
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
