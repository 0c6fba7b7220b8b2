"""The reference's (mmsegmentation 1.2.2) logits on seeded inputs, on its threads and on one thread.

    REFERENCE_PYTHON benchmarks/reference_logits.py SHORT SIZE INPUTS OUT.npz

Run by ``side_by_side.py`` with the reference's venv. Input ``i`` is ``torch.manual_seed(i)``
then ``torch.randn(1, 3, SIZE, SIZE)``; input 0 is the one ``ref_bench.py infer`` times. The model
is ``ref_bench.build``'s (the weights ``ref_bench.py export`` writes). ``OUT.npz`` holds ``x``
(INPUTS, 3, SIZE, SIZE), ``logits`` (INPUTS, C, SIZE, SIZE) on torch's default thread count
(``OMP_NUM_THREADS`` or every core), and ``logits_one_thread`` on one thread: the same network
and input, summed in another order. How far these two lie apart is how closely float32 pins this
network's output, which is the scale against which knet's difference from ``logits`` is read.
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared" / "reference"))
import ref_bench  # noqa: E402  (the reference's builder, from ../shared/reference)


def main() -> None:
    short, size, inputs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    model = ref_bench.build(short).eval()
    metas = [dict(img_shape=(size, size), ori_shape=(size, size))]
    threads = torch.get_num_threads()
    xs, logits, logits_one_thread = [], [], []
    with torch.inference_mode():
        for seed in range(inputs):
            torch.manual_seed(seed)
            x = torch.randn(1, 3, size, size)
            torch.set_num_threads(threads)
            logits.append(model.encode_decode(x, metas).numpy())
            torch.set_num_threads(1)
            logits_one_thread.append(model.encode_decode(x, metas).numpy())
            xs.append(x.numpy())
    np.savez(out, x=np.concatenate(xs), logits=np.concatenate(logits),
             logits_one_thread=np.concatenate(logits_one_thread), threads=threads)
    print(f"wrote {out}: {inputs} inputs, {threads} threads and 1")


if __name__ == "__main__":
    main()
