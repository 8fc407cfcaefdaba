"""Print EfficientNet-Lite0's ImageNet top-5 for some images: a quick check that the weights behave.

python -m sevlm.encoders.top5 /data/wikiart/Rococo/*.jpg --labels imagenet_classes.txt
"""

from __future__ import annotations

import argparse
import re

from sevlm.encoders.base import ImageError, build_encoder, load_pixels


def main(argv: list[str] | None = None) -> int:
    """Print ImageNet top-5 for some images: a quick look that the weights behave.

    python -m sevlm.encoders.top5 IMAGE [IMAGE ...] [--labels imagenet_classes.txt]
    (--labels: one class name per line, or "index, name" lines; without it, indices are shown)
    """
    p = argparse.ArgumentParser(prog="python -m sevlm.encoders.top5", description=main.__doc__.split("\n")[0])
    p.add_argument("images", nargs="+")
    p.add_argument("--labels", default=None, help="ImageNet class names, one per line (optionally 'index, name')")
    p.add_argument("--weights", default=None)
    args = p.parse_args(argv)
    labels = None
    if args.labels:
        lines = [ln.strip() for ln in open(args.labels, encoding="utf-8") if ln.strip()]
        pairs = [re.match(r"^(\d+)\s*[,:]\s*(.+)$", ln) for ln in lines]
        labels = {int(m.group(1)): m.group(2) for m in pairs if m} or dict(enumerate(lines))
    enc = build_encoder("efficientnet-lite0", weights=args.weights)
    for path in args.images:
        try:
            probs = enc.classify(load_pixels(path, enc.preprocess)[None])[0]  # (1000,)
        except ImageError as e:
            print(e)
            continue
        top = probs.topk(5)
        shown = ", ".join(
            f"{labels.get(int(i), i) if labels else int(i)} {float(v):.2f}" for v, i in zip(top.values, top.indices)
        )
        print(f"{path}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
