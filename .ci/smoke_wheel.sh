#!/usr/bin/env bash
# The wheel as a user gets it: built from this checkout, installed into a clean virtual environment
# beside the floor torch of pyproject.toml (not the checkout, not make's .venv), then a smoke subset:
# import, the command, the metadata, the golden parity tests, a prediction and one training step.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_PIN="${TORCH_PIN:-torch==2.13.0}"  # the floor that pyproject.toml declares (torch>=2.13)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
export OMP_NUM_THREADS=1 PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== smoke: build the wheel"
"$PYTHON" -m venv "$work/venv"
pip="$work/venv/bin/pip"
py="$work/venv/bin/python"
"$pip" install -q "$TORCH_PIN"
"$pip" wheel -q . --no-deps -w "$work/dist"
wheel="$(ls "$work"/dist/knet_seg-*.whl)"
echo "$(basename "$wheel")"
# the wheel ships the typing marker and the package data
"$py" - "$wheel" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
for required in ("knet/py.typed", "knet/__init__.py", "knet/data/coco_panoptic_categories.json"):
    assert required in names, f"{required} is not in the wheel"
assert any(n.startswith("knet/serve/static/") for n in names), "knet/serve/static/ is not in the wheel"
assert not any(n.startswith("tests/") for n in names), "the tests are in the wheel"
EOF

echo "== smoke: install it beside $TORCH_PIN"
"$pip" install -q "$wheel" "pytest>=7"
"$py" -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_PIN#torch==}', torch.__version__"
cd "$work"  # away from the checkout: knet must come from the installed wheel
"$py" -c "import knet, pathlib; assert 'site-packages' in pathlib.Path(knet.__file__).parts, knet.__file__; print('import knet', knet.__version__)"
"$work/venv/bin/knet" --version
"$pip" show knet-seg | grep -E '^(Name|Version|Requires):'

echo "== smoke: predict and one training step"
"$py" - <<'EOF'
import numpy as np
from PIL import Image

import knet
from knet.data.synthetic import make_synthetic_dataset

knet.save_pretrained(knet.build_model("knet-r50-fcn-tiny"), "model")
Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save("picture.png")
make_synthetic_dataset("toy", num_classes=4, num_train=2, num_val=1, size=(64, 64), seed=0)
EOF
"$work/venv/bin/knet" predict --checkpoint model picture.png --out-dir predictions
ls predictions
"$work/venv/bin/knet" train --model knet-r50-fcn-tiny --data-root toy --work-dir run --iters 1 --batch-size 2 \
    --workers 0 --device cpu --set data.crop_size=64,64 data.train_scale=64,64 data.test_scale=64,64
test -s run/log.jsonl

echo "== smoke: golden parity and the package's surface, against the installed wheel"
cd - >/dev/null
# -p no:cacheprovider: nothing written into the checkout; the tests import knet from the wheel
"$py" -m pytest -q -p no:cacheprovider tests/models/test_golden_parity.py tests/test_package.py
echo "smoke_wheel: passed in $((SECONDS - start)) s"
