#!/usr/bin/env bash
# A folder of images, federated from the command line.
#
#     bash examples/image_folder.sh [FOLDER]
#
# Writes a tiny dataset in torchvision's ImageFolder layout (FOLDER/train/<class>/*.png, FOLDER/test/<class>/*.png;
# three classes of coloured shapes, mixed sizes, some grayscale), then trains FedAvg on it. --image-size resizes
# every image (needed here: the sizes differ). The decoded images are cached in FOLDER/.fedsim-cache/, so a second
# run starts without decoding. Your own folder works the same way: only class folders (no train/ and test/) with
# --test-fraction F holds out F of each class for testing.
set -euo pipefail
folder="${1:-$(mktemp -d)/shapes}"

python - "$folder" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

root, rng = Path(sys.argv[1]), np.random.default_rng(0)
for split, count in (("train", 60), ("test", 15)):
    for label, shape in enumerate(("circle", "square", "triangle")):
        (root / split / shape).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            size = int(rng.integers(20, 33))
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
            a, b = sorted(rng.integers(2, size - 2, 2))
            b = max(b, a + 6)
            fill = tuple(int(v) for v in rng.integers(150, 256, 3))
            draw = ImageDraw.Draw(image)
            if shape == "circle":
                draw.ellipse((a, a, b, b), fill=fill)
            elif shape == "square":
                draw.rectangle((a, a, b, b), fill=fill)
            else:
                draw.polygon(((a, b), (b, b), ((a + b) // 2, a)), fill=fill)
            (image.convert("L") if i % 4 == 0 else image).save(root / split / shape / f"{i}.png")
print(f"wrote {root}")
PY

fedsim train --dataset "$folder" --image-size 16 --model cnn --clients 5 --dirichlet 1.0 --rounds 20 --local-epochs 2 \
    --out-dir "$(dirname "$folder")/results" --name shapes-fedavg
