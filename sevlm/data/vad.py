"""The VAD lexicon (valence, arousal, dominance per word) and its alignment to BPE tokens.

NRC-VAD ships V/A/D in [0, 1]; like the paper's code we use the bipolar scale 2x - 1 in
[-1, 1], so an unknown word's zero vector sits at the neutral point.

Alignment works on whole words, never on BPE fragments: the text is split into words
(letter runs, with inner apostrophes), each word is looked up once (lower-cased, then a
few suffix rules for inflections), and every token whose character span overlaps the
word gets that word's vector. Tokens touching no word (punctuation, EOS) get zeros and
mask False.

Three alignments are offered:
- `causal=False` (default): every piece of a word gets the whole word's vector. Used as
  the VAD head's *target* (the lexicon VAD of the next token).
- `causal=True`: a piece gets the vector of its word *as completed so far* (the text of
  the word up to the end of that piece), looked up exactly: no inflection rules, only a
  clitic after an apostrophe is dropped. This is what generation can know at step t, so the
  model's VAD *input* uses it in training too: the input of position t depends only on
  tokens <= t, and training and inference see the same values. No inflection rules because
  the word may go on: the prefix "abys" of "abysmal", read as a plural, would borrow the
  vector of "aby". Generation cannot tell a finished word from one in progress, so whole
  words get the exact lookup too ("paintings" has no input vector; its *target* is
  "painting"'s).
- `vad_for_pieces` (the authors', `model.vad_input="piece"`): every BPE piece is looked up on
  its own, lemmatised, and serves as both input and target: "abys" + "mal" get the vectors of
  "aby" and "mal", whatever the word. The authors lemmatise with WordNet and nltk's POS tags;
  here the lexicon's own light lemmatisation stands in (WordNet's data is not shipped).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from sevlm.errors import DataError

DEMO = "demo"  # the lexicon setting that names the shipped demo table
# The demo and tiny configs' setting: the demo table on the synthetic demo data only (its words
# come from that table); on any other dataset training asks for a lexicon (data.lexicon=PATH, or
# data.lexicon=demo to use the demo table anyway). A run records what it resolved to.
DEMO_DATA = "demo-data"


def lexicon_spec(spec: str | Path | None, default: str | None = None) -> str | None:
    """A lexicon setting in its one recorded form: DEMO (the shipped demo table), DEMO_DATA or an
    absolute path. Unset (None or "") gives `default`: never the demo table unless a caller says so."""
    if spec is None or str(spec) == "":
        return default
    return str(spec) if str(spec) in (DEMO, DEMO_DATA) else str(Path(spec).resolve())


DEMO_TABLE = Path(__file__).resolve().parents[1] / "assets" / "demo_vad.tsv"

# A word: letters with optional inner apostrophes ("don't", "painting's").
WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")


def _candidates(word: str) -> list[str]:
    """Lemma candidates for an inflected English word, most specific first."""
    out: list[str] = []

    def add(w: str) -> None:
        if len(w) >= 2 and w not in out:
            out.append(w)

    if "'" in word:
        # "painting's" -> "painting", "don't" -> "don"
        word = word.split("'")[0]
        add(word)

    def stem(base: str) -> None:
        # base is the word without its suffix: try it with "e" first ("hated" -> "hate", not
        # "hat"; "scared" -> "scare", not "scar"), then as is, then undoubled ("sadd" -> "sad").
        add(base + "e")
        add(base)
        if len(base) >= 3 and base[-1] == base[-2] and base[-1] not in "aeiouls":
            add(base[:-1])

    w = word
    if w.endswith("ies") and len(w) > 4:
        add(w[:-3] + "y")
    if w.endswith("ied") and len(w) > 4:
        add(w[:-3] + "y")
    if w.endswith("es") and len(w) > 3:
        add(w[:-2])
    if w.endswith("s") and not w.endswith("ss") and len(w) > 3:
        add(w[:-1])
    if w.endswith("ed") and len(w) > 4:
        stem(w[:-2])
    if w.endswith("ying") and len(w) > 5:
        add(w[:-4] + "ie")
    if w.endswith("ing") and len(w) > 5:
        stem(w[:-3])
    if w.endswith("ily") and len(w) > 4:
        add(w[:-3] + "y")
    if w.endswith("ly") and len(w) > 4:
        add(w[:-2])
    if w.endswith("ier") and len(w) > 4:
        add(w[:-3] + "y")
    if w.endswith("iest") and len(w) > 5:
        add(w[:-4] + "y")
    if w.endswith("er") and len(w) > 4:
        stem(w[:-2])
    if w.endswith("est") and len(w) > 5:
        stem(w[:-3])
    # Second round: stacked suffixes ("saddened" -> "sadden" -> "sad") and British
    # spellings ("colours" -> "colour" -> "color"; NRC-VAD lists American ones).
    for c in [word] + out:
        if c.endswith("our") and len(c) >= 6:
            add(c[:-3] + "or")
    for c in list(out):
        if c.endswith("en") and len(c) > 4:
            stem(c[:-2])
    return out


class VADLexicon:
    """Word -> bipolar VAD vector, with light lemmatisation for words not listed as is."""

    def __init__(self, table: dict[str, np.ndarray], source: str = "custom", bipolar: bool = True):
        self.table = table
        self.source = source
        self.bipolar = bipolar
        self._cache: dict[str, np.ndarray | None] = {}

    @classmethod
    def from_file(cls, path: str | Path, bipolar: bool = True) -> "VADLexicon":
        """Read a tab-separated Word/Valence/Arousal/Dominance table (header optional, values in [0,1])."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: VAD lexicon not found")
        table: dict[str, np.ndarray] = {}
        first_line: dict[str, int] = {}
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) != 4:
                raise DataError(
                    f"{path}, line {lineno}: expected 4 tab-separated fields (word, valence, arousal, dominance), "
                    f"got {len(parts)}: {line[:60]!r}"
                )
            word = parts[0].strip().lower()
            try:
                values = [float(x) for x in parts[1:]]
            except ValueError:
                if lineno == 1 or not table and word == "word":
                    continue  # header
                raise DataError(f"{path}, line {lineno}: values are not numbers: {line[:60]!r}") from None
            if not word:
                raise DataError(f"{path}, line {lineno}: empty word")
            if not all(0.0 <= v <= 1.0 for v in values):
                raise DataError(f"{path}, line {lineno}: values must lie in [0, 1], got {values}")
            vec = np.asarray(values, dtype=np.float32)
            vec = 2.0 * vec - 1.0 if bipolar else vec
            vec.flags.writeable = False  # lookups hand out the table's own arrays
            if word in table and not np.array_equal(table[word], vec):  # not a silent last-wins
                raise DataError(
                    f"{path}, line {lineno}: {word!r} is listed again with other values "
                    f"(first at line {first_line[word]}); keep one of them"
                )
            table[word] = vec
            first_line.setdefault(word, lineno)
        if not table:
            raise DataError(f"{path}: no entries")
        return cls(table, source=str(path.resolve()), bipolar=bipolar)

    @classmethod
    def demo(cls) -> "VADLexicon":
        """The small table shipped for the demo vocabulary (sevlm/assets/demo_vad.tsv)."""
        lex = cls.from_file(DEMO_TABLE)
        lex.source = DEMO
        return lex

    @classmethod
    def load(cls, spec: str | Path) -> "VADLexicon":
        """`"demo"` for the shipped table, else a path to an NRC-VAD-format file."""
        return cls.demo() if str(spec) in (DEMO, DEMO_DATA) else cls.from_file(spec)

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, word: str) -> bool:
        return self.lookup(word) is not None

    def lookup(self, word: str, exact: bool = False) -> np.ndarray | None:
        """The word's VAD vector (bipolar), trying lemma candidates unless `exact`; None if unknown.

        `exact` applies no inflection rule; it still reads "woman's" as "woman", since the part
        before an apostrophe is a finished word."""
        word = word.lower().replace("’", "'")
        if exact:
            vec = self.table.get(word)
            return self.table.get(word.split("'")[0]) if vec is None and "'" in word else vec
        if word in self._cache:
            return self._cache[word]
        vec = self.table.get(word)
        if vec is None:
            for cand in _candidates(word):
                vec = self.table.get(cand)
                if vec is not None:
                    break
        self._cache[word] = vec
        return vec

    def coverage(self, texts) -> tuple[int, int]:
        """(distinct words of `texts` the lexicon knows, distinct words), lower-cased, looked up
        with the inflection rules the VAD targets use."""
        words = {w.lower() for t in texts for w in WORD_RE.findall(t or "")}
        return sum(self.lookup(w) is not None for w in words), len(words)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "entries": len(self.table),
            "scale": "bipolar [-1,1]" if self.bipolar else "[0,1]",
        }


def vad_for_tokens(
    text: str,
    offsets: Sequence[tuple[int, int]],
    lexicon: VADLexicon,
    causal: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token VAD from character spans: (vad float32 [T,3], in-lexicon mask bool [T]).

    `offsets` are the tokenizer's (start, end) character spans into `text`
    (`return_offsets_mapping=True`); special tokens may have (0, 0) and get zeros. See
    the module docstring for `causal`.
    """
    words = [(m.start(), m.end()) for m in WORD_RE.finditer(text)]
    vad = np.zeros((len(offsets), 3), dtype=np.float32)
    mask = np.zeros(len(offsets), dtype=bool)
    wi = 0
    for t, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        while wi < len(words) and words[wi][1] <= s:
            wi += 1
        # GPT-2 pre-tokenisation never joins two words in one token, so the first word
        # overlapping the span is the token's word.
        if wi >= len(words) or words[wi][0] >= e:
            continue
        ws, we = words[wi]
        vec = lexicon.lookup(text[ws : min(we, e)], exact=True) if causal else lexicon.lookup(text[ws:we])
        if vec is not None:
            vad[t] = vec
            mask[t] = True
    return vad, mask


def vad_for_pieces(
    text: str,
    offsets: Sequence[tuple[int, int]],
    lexicon: VADLexicon,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token VAD with each token's own text looked up as a word (lemmatised), the authors'
    per-piece lookup: (vad float32 [T,3], in-lexicon mask bool [T]). Spans as `vad_for_tokens`."""
    vad = np.zeros((len(offsets), 3), dtype=np.float32)
    mask = np.zeros(len(offsets), dtype=bool)
    for t, (s, e) in enumerate(offsets):
        piece = text[s:e].strip() if e > s else ""
        vec = lexicon.lookup(piece) if piece else None
        if vec is not None:
            vad[t] = vec
            mask[t] = True
    return vad, mask
