"""`sevlm predict`: emotion + explanation for image files, from a run's exported weights."""

from __future__ import annotations

from sevlm.commands.generate import add_decoding_arguments, decoding_changes

HELP = "predict the emotion and an explanation for image files with a trained run"
EXAMPLES = """\
  sevlm predict --run runs/sevlm painting.jpg
  sevlm predict --run runs/sevlm/export a.jpg b.png --beams 3 --json
  sevlm predict --run runs/sevlm a.jpg --strategy sample --top-p 0.9 --seed 7
  sevlm predict --run runs/sevlm paintings/ 'more/*.png'   # every image in a folder (recursively), a glob
"""


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="training run folder (or its export/ folder)")
    p.add_argument(
        "images",
        nargs="+",
        metavar="IMAGE",
        help="image files, folders (every image under them) or glob patterns (quoted: 'dir/*.jpg')",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    p.add_argument("--lexicon", default=None, help="VAD lexicon path (or 'demo') if the recorded one is not here")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_decoding_arguments(p)


def run(args) -> int:
    import json

    from sevlm.predictions import predict_images

    results = predict_images(
        args.run, image_files(args.images), decoding=decoding_changes(args), device=args.device, lexicon=args.lexicon
    )
    for r in results:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            prob = f"{r['emotion_prob']:.2f}" if r["emotion_prob"] is not None else "n/a"
            emotion = r["emotion"] or f"(not one of the 9: {r['raw']!r})"
            print(f"{r['image']}\n  emotion: {emotion} (p={prob})\n  explanation: {r['explanation']}")
    return 0


def image_files(items: list[str]) -> list[str]:
    """The image files that IMAGE arguments name: files as given, folders as every image file under
    them (sorted), glob patterns as their matches. A name that matches nothing is an error that
    says what exists instead (the same name with an image suffix)."""
    import glob
    from pathlib import Path

    from sevlm.data.table import IMAGE_SUFFIXES
    from sevlm.errors import DataError

    suffixes = {s.lower() for s in IMAGE_SUFFIXES}
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise DataError(f"{item}: folder holds no image file ({', '.join(sorted(suffixes))})")
            out += found
        elif path.is_file():
            out.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                raise DataError(f"{item}: no file matches this pattern")
            out += found
        else:
            near = [str(path) + s for s in IMAGE_SUFFIXES if Path(str(path) + s).is_file()]
            raise DataError(f"{item}: file not found" + (f"; did you mean {near[0]}?" if near else ""))
    return list(dict.fromkeys(out))  # each once, in order
