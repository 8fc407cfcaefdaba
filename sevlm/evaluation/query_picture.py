"""The picture of `sevlm retrieve --query`'s answers: one row per query, the query then its top
results, each painting with its score and ground truth.

Drawn with PIL rather than matplotlib: a 20-query picture is ~180 panels, which matplotlib's
axes take seconds to lay out and render.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

from sevlm.data.folder import resolve_image
from sevlm.io import atomic_path

GALLERY_COLUMNS = 8  # results drawn per query at most (the JSON keeps all --top)
GALLERY_PANEL_PX = (240, 370)  # one painting with its caption: width, height
GALLERY_THUMB_PX = 200
GALLERY_MATCH_COLOUR = (0, 128, 0)  # a result whose dominant emotion is the query's nearest emotion


def _gallery_fonts():
    """(regular, bold) TrueType fonts: matplotlib's DejaVu Sans, else PIL's built-in font."""
    try:
        ttf = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        return ImageFont.truetype(str(ttf / "DejaVuSans.ttf"), 11), ImageFont.truetype(
            str(ttf / "DejaVuSans-Bold.ttf"), 12
        )
    except OSError:
        return ImageFont.load_default(), ImageFont.load_default()


def _thumbnail(images_dir: Path, image_name: str | None):
    """The painting as an RGB thumbnail, or (None, why) when it cannot be read."""
    path = resolve_image(images_dir, image_name) if image_name else None
    if path is None:
        return None, f"no image: not in {images_dir}"
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((GALLERY_THUMB_PX, GALLERY_THUMB_PX))
            return im, ""
    except (OSError, Image.DecompressionBombError) as e:  # one missing painting does not cost the picture
        return None, f"no image: {e}"


def _truth_lines(gt: dict) -> list[str]:
    votes = ", ".join(f"{e} {n}" for e, n in Counter(gt["emotions"]).most_common())
    return [f"dominant: {gt['dominant_emotion'] or 'none'}", f"votes: {votes}"]


def plot_query_gallery(result: dict, images_dir: str | Path, path: str | Path) -> Path:
    """One row per query: the query (its image, or its text) then its top results, each painting
    with its score, its ground truth (dominant emotion, votes) and its first human explanation
    (or, for an explanation result, the matched explanation and its annotator's emotion). A
    result's title is green when its dominant emotion is the query's nearest emotion."""
    images_dir, path = Path(images_dir), Path(path)
    queries = result["queries"]
    cols = 1 + min(GALLERY_COLUMNS, max(len(q["results"]) for q in queries))
    w, h = GALLERY_PANEL_PX
    canvas = Image.new("RGB", (cols * w, len(queries) * h), "white")
    draw = ImageDraw.Draw(canvas)
    font, bold = _gallery_fonts()
    line_h, wrap_at = 14, 36

    def panel(r: int, c: int, title: str, image, why: str, lines: list[str], colour=(0, 0, 0), italic_text=None):
        x0, y0 = c * w + 8, r * h + 6
        draw.text((x0, y0), title, fill=colour, font=bold)
        box_y = y0 + 20
        if italic_text is not None:  # a text query stands where a painting would
            for k, line in enumerate(textwrap.wrap(italic_text, 30)[:12]):
                draw.text((x0, box_y + 4 + k * line_h), line, fill=(40, 40, 40), font=font)
        elif image is not None:
            canvas.paste(
                image, (x0 + (GALLERY_THUMB_PX - image.width) // 2, box_y + (GALLERY_THUMB_PX - image.height) // 2)
            )
        else:
            draw.rectangle([x0, box_y, x0 + GALLERY_THUMB_PX, box_y + GALLERY_THUMB_PX], fill=(230, 230, 230))
            for k, line in enumerate(textwrap.wrap(why, 30)[:6]):
                draw.text((x0 + 4, box_y + 60 + k * line_h), line, fill=(0, 0, 0), font=font)
        y = box_y + GALLERY_THUMB_PX + 6
        room = (r + 1) * h - 4 - y
        wrapped = [part for line in lines for part in (textwrap.wrap(line, wrap_at) or [""])]
        for k, line in enumerate(wrapped[: room // line_h]):
            draw.text((x0, y + k * line_h), line, fill=(0, 0, 0), font=font)

    for r, q in enumerate(queries):
        top_emotion = q["emotions"][0]["emotion"]
        title = f"Q{r + 1} {q['kind']} -> {q['target']}"
        if q["kind"] == "image":
            image_path = Path(q["query"]["image"])
            im, why = _thumbnail(image_path.parent, image_path.name)
            lines = [image_path.name, *(_truth_lines(q["ground_truth"]) if "ground_truth" in q else [])]
            panel(r, 0, title, im, why, [*lines, f"nearest emotion: {top_emotion}"])
        else:
            panel(r, 0, title, None, "", [f"nearest emotion: {top_emotion}"], italic_text=f"\u201c{q['query']}\u201d")
        for c, res in enumerate(q["results"][: cols - 1], 1):
            gt = res["ground_truth"]
            im, why = _thumbnail(images_dir, res.get("image_name"))
            explanation = (
                f"[{res['explanation_emotion']}] {res['explanation']}"
                if "explanation" in res
                else f"1st human: {gt['explanation']}"
            )
            panel(
                r,
                c,
                f"#{res['rank']}  {res['score']:.3f}  {gt['dominant_emotion'] or 'none'}",
                im,
                why,
                [*_truth_lines(gt), explanation],
                colour=GALLERY_MATCH_COLOUR if gt["dominant_emotion"] == top_emotion else (0, 0, 0),
            )
        if r:
            draw.line([(0, r * h), (cols * w, r * h)], fill=(200, 200, 200))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path
