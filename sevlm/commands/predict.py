"""`sevlm predict`: emotion + explanation for image files, from a run's exported weights."""

from __future__ import annotations

from sevlm.commands.generate import add_decoding_arguments, decoding_changes

HELP = "predict the emotion and an explanation for image files with a trained run"
EXAMPLES = """\
  sevlm predict --run runs/sevlm painting.jpg
  sevlm predict --run runs/sevlm/export a.jpg b.png --beams 3 --json
  sevlm predict --run runs/sevlm a.jpg --strategy sample --top-p 0.9 --seed 7
"""


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="training run folder (or its export/ folder)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    p.add_argument("--lexicon", default=None, help="VAD lexicon path (or 'demo') if the recorded one is not here")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_decoding_arguments(p)


def run(args) -> int:
    import json

    from sevlm.generate import predict_images

    results = predict_images(args.run, args.images, decoding=decoding_changes(args), device=args.device,
                             lexicon=args.lexicon)
    for r in results:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            prob = f"{r['emotion_prob']:.2f}" if r["emotion_prob"] is not None else "n/a"
            emotion = r["emotion"] or f"(not one of the 9: {r['raw']!r})"
            print(f"{r['image']}\n  emotion: {emotion} (p={prob})\n  explanation: {r['explanation']}")
    return 0
