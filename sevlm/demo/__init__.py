"""A synthetic, ArtEmis-format demo dataset: drawn "paintings" and a simulated crowd.

There is no ArtEmis on our machines, so the demo makes its own data, clearly labelled
synthetic. Each picture is drawn for one emotion: the emotion fixes the palette, the
brightness, the background texture and the motif (dots for amusement, a glowing orb for
awe, jagged spikes for anger, ...). An independent "style" adds a brushwork overlay, and
a second, confusable emotion is mixed in with a random weight, so pictures vary within a
class and some are ambiguous. A crowd of 5-7 simulated annotators then picks emotions:
the drawn one most of the time (less often the more ambiguous the picture), otherwise a
confusable neighbour. Each annotator writes an explanation from one of several templates
of the chosen emotion, naming colours and shapes that are really in the picture.

Modules: `tables` (the palettes, motif words, templates and confusions, from `tables.json`),
`draw` (pictures; `MOTIFS` maps each emotion to its motif), `crowd` (annotators' emotions and
explanations), `real` (the real-paintings mode) and `make` (`make_demo_data`, the files).

The output enters the pipeline through `sevlm prepare` like real data:
`out_dir/artemis_dataset_release_v0.csv` (ArtEmis v1 columns), `out_dir/images/<Style>/
<painting>.jpg`, `README.txt`, and `demo_info.json` (the drawn emotion per painting, for
checks). With `images_dir`, pictures come from real paintings instead (e.g. WikiArt) and
their emotion is assigned from measured brightness, saturation, warmth and texture.

`sevlm/assets/demo_vad.tsv` (loaded by `VADLexicon.demo()`) gives the content words of these
templates valence/arousal/dominance values in [0, 1]: our own rough estimates, written for
this demo and not taken from NRC-VAD, so the demo needs no licensed file. Function words
are left out (they get zeros and a false in-lexicon mask).
"""

from sevlm.demo.make import CSV_NAME, make_demo_data

__all__ = ["CSV_NAME", "make_demo_data"]
