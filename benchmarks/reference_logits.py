"""The reference's (mmsegmentation 1.2.2) logits on seeded inputs, on its threads and on one thread.

    REFERENCE_PYTHON benchmarks/reference_logits.py SHORT SIZE INPUTS OUT.npz [--compile] [--weights W.pth]

Run by ``side_by_side.py`` with the reference's venv. Input ``i`` is ``torch.manual_seed(i)``
then ``torch.randn(1, 3, SIZE, SIZE)``; input 0 is the one ``ref_bench.py infer`` times. The model
is ``reference_bench.build``'s: the reference's initialisation, or ``--weights`` loaded. ``OUT.npz`` holds ``x``
(INPUTS, 3, SIZE, SIZE), ``logits`` (INPUTS, C, SIZE, SIZE) on torch's default thread count
(``OMP_NUM_THREADS`` or every core), and ``logits_one_thread`` on one thread: the same network
and input, summed in another order. How far these two lie apart is how closely float32 pins this
network's output, which is the scale against which knet's difference from ``logits`` is read.
With ``--compile`` also ``logits_compiled``: the reference's own forward through ``torch.compile``
(Inductor, frozen weights, as knet's ``--compile``) on the default threads.
"""
import argparse

import numpy as np
import torch

from reference_bench import build  # beside this file: ref_bench.build with given weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("short")
    parser.add_argument("size", type=int)
    parser.add_argument("inputs", type=int)
    parser.add_argument("out")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    model = build(args.short, args.weights).eval()
    metas = [dict(img_shape=(args.size, args.size), ori_shape=(args.size, args.size))]
    threads = torch.get_num_threads()
    compiled = (torch.compile(lambda x: model.encode_decode(x, metas), options={"freezing": True})
                if args.compile else None)
    saved = {"x": [], "logits": [], "logits_one_thread": [], "logits_compiled": []}
    with torch.inference_mode():
        for seed in range(args.inputs):
            torch.manual_seed(seed)
            x = torch.randn(1, 3, args.size, args.size)
            saved["x"].append(x.numpy())
            torch.set_num_threads(threads)
            saved["logits"].append(model.encode_decode(x, metas).numpy())
            if compiled is not None:
                saved["logits_compiled"].append(compiled(x).numpy())
            torch.set_num_threads(1)
            saved["logits_one_thread"].append(model.encode_decode(x, metas).numpy())
    np.savez(args.out, threads=threads, **{k: np.concatenate(v) for k, v in saved.items() if v})
    print(f"wrote {args.out}: {args.inputs} inputs, {threads} threads and 1" + (", compiled" if args.compile else ""))


if __name__ == "__main__":
    main()
