"""ArtEmis's text preprocessing for deep nets, so sevlm's text is the field's text.

ArtEmis (optas/artemis, `preprocess_artemis_data.py --preprocess-for-deep-nets True`) turns
each utterance into `utterance_spelled`, the text every published ArtEmis captioner trains and
is scored on. `ArtemisText.tokens` applies its rules, in its order:

1. a manual correction of whole utterances (exact match on the utterance as written);
2. lower case;
3. unquoting: a word wrapped in quotes (' " or |) loses them ("the 'sad' man" -> "the  sad  man");
4. contraction expansion (ArtEmis's table, matched anywhere, first listed form first);
5. the punctuation  .?!,:;/\\-~*_=[–]{}$^@|%#<—>  mapped to spaces;
6. nltk's word tokeniser (punctuation is gone, so no sentence splitting is needed:
   `word_tokenize(..., preserve_line=True)` gives the tokens `word_tokenize` gives);
7. a manual token table (a token may become several: "im" -> "i", "am");
8. SymSpell for tokens outside the GloVe 6B vocabulary plus ArtEmis's own list of real words.

Step 8 as ArtEmis runs it: its speller calls `SymSpell.lookup(token, 1)`, which symspellpy
reads as `verbosity=1, max_edit_distance=None`, i.e. the dictionary's maximum, 2 (not the
1 its signature suggests), and keeps the closest, most frequent suggestion. We call it the
same way, so a token two edits from a dictionary word is corrected as in ArtEmis.

The tables (GloVe word list, SymSpell dictionary, spelling and contraction tables) ship in
`sevlm/assets/artemis-text/` with their NOTICE.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from nltk.tokenize import word_tokenize as nltk_tokenize
from symspellpy import SymSpell, Verbosity

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "artemis-text"
GLOVE_WORDS = "glove.6B.100d.vocabulary.txt"
SYMSPELL_DICTIONARY = "symspell_frequency_dictionary_en_82_765.txt"
SPELLING = "artemis_spelling.json"
CONTRACTIONS = "artemis_contractions.json"

# ArtEmis's `basic_punct` (its backslash-hyphen is a literal backslash and a hyphen).
PUNCTUATION = ".?!,:;/\\-~*_=[–]{}$^@|%#<—>"
_PUNCT_TO_SPACE = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))
# A word wrapped in quotes; the character class is ArtEmis's (the | is a literal bar).
_QUOTED = re.compile(r"""['|"]\w+['|"]""")
# Text nltk's tokeniser splits on white space alone: lower-case ASCII words and digits,
# except the words its contraction rules split ("cannot" -> "can", "not"; "gonna" -> "gon", "na").
_PLAIN = re.compile(r"[a-z0-9 ]*")
_NLTK_SPLITS = frozenset(("cannot", "gimme", "gonna", "gotta", "lemme", "wanna"))
# SymSpell's lookup(token, 1) as ArtEmis calls it: verbosity 1, the dictionary's edit distance.
_SPELL_DISTANCE = 2


def unquote(text: str) -> str:
    """Blank the quotes around quoted words: "a 'sad' day" -> "a  sad  day"."""
    chars = None
    for m in _QUOTED.finditer(text):
        if chars is None:
            chars = list(text)
        chars[m.start()] = " "
        chars[m.end() - 1] = " "
    return text if chars is None else "".join(chars)


def word_tokenize(text: str) -> list[str]:
    """nltk's word tokens of punctuation-free text; plain text takes a fast path with the same
    result (tests compare both on many strings)."""
    if _PLAIN.fullmatch(text):
        words = text.split()
        if not _NLTK_SPLITS.intersection(words):
            return words
    return nltk_tokenize(text, preserve_line=True)


@functools.lru_cache(maxsize=2)  # the tables take seconds to load: once per process
def _glove_words(path: Path) -> frozenset[str]:
    words = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.split()  # as ArtEmis reads it: the first white-space-separated field
            if fields:
                words.add(fields[0])
    return frozenset(words)


@functools.lru_cache(maxsize=2)
def _symspell(path: Path):
    speller = SymSpell(max_dictionary_edit_distance=_SPELL_DISTANCE)  # SymSpell()'s default, as ArtEmis
    if not speller.load_dictionary(str(path), term_index=0, count_index=1):
        raise FileNotFoundError(path)
    return speller


class ArtemisText:
    """ArtEmis's deep-net text preprocessing; see the module docstring.

    `spell_check=False` skips step 8 (ArtEmis's `--automatic-spell-check False`). Counters
    (`stats`) record what each rule changed, for the dataset manifest.
    """

    def __init__(self, assets: str | Path = ASSETS, spell_check: bool = True):
        assets = Path(assets)
        spelling = json.loads((assets / SPELLING).read_text(encoding="utf-8"))
        self.sentence_spelling: dict[str, str] = spelling["sentence_spelling_dictionary"]
        self.token_spelling: dict[str, str | list[str]] = spelling["token_spelling_dictionary"]
        contractions = json.loads((assets / CONTRACTIONS).read_text(encoding="utf-8"))["contractions_dict"]
        self.contractions: dict[str, str] = contractions
        # As ArtEmis builds it: the table's keys as an alternation in table order, not escaped.
        self._contraction_re = re.compile("(" + "|".join(contractions) + ")", re.IGNORECASE | re.DOTALL)
        self._longest = max(map(len, contractions))
        self.spell_check = spell_check
        self._assets = assets
        self._speller = None
        self._vocabulary: frozenset[str] | None = None
        self._extra_words = frozenset(spelling["missing_from_glove_but_are_actual_words"])
        self._spelled: dict[str, str | None] = {}  # token -> SymSpell's correction (None: none found)
        self.stats = {
            "utterances_spelled_manually": 0,
            "contractions_expanded": 0,
            "tokens_spelled_manually": 0,
            "tokens_spell_checked": 0,
            "tokens_corrected": 0,
            "tokens_without_correction": 0,
        }

    # ----------------------------------------------------------------- the tables

    @property
    def vocabulary(self) -> frozenset[str]:
        """GloVe 6B's words plus ArtEmis's list of real words GloVe lacks."""
        if self._vocabulary is None:
            self._vocabulary = _glove_words(self._assets / GLOVE_WORDS) | self._extra_words
        return self._vocabulary

    @property
    def speller(self):
        if self._speller is None:
            self._speller = _symspell(self._assets / SYMSPELL_DICTIONARY)
        return self._speller

    # ----------------------------------------------------------------- the rules

    def _expand(self, match: re.Match) -> str:
        found = match.group(0)
        expanded = self.contractions.get(found)
        if expanded is None:
            expanded = self.contractions[found.lower()]
        return expanded.lower()

    def clean(self, utterance: str) -> str:
        """Steps 1-5: the text that is tokenised."""
        text = self.sentence_spelling.get(utterance)
        if text is None:
            text = utterance
        else:
            self.stats["utterances_spelled_manually"] += 1
        text = unquote(text.lower())
        if "'" in text:  # every contraction in the table has one
            text = self._expand_contractions(text)
        return text.translate(_PUNCT_TO_SPACE)

    def _expand_contractions(self, text: str) -> str:
        """`re.sub` of ArtEmis's contraction pattern, tried only where a match can start.

        Every key holds an apostrophe and is at most `_longest` long, so a match starts at most
        `_longest - 1` characters before an apostrophe. Trying the same pattern at those places
        only, left to right and after the last match, finds the matches `sub` finds (the
        alternation's first-listed-wins order included), at a fraction of the cost.
        """
        out, done = [], 0
        apostrophes = [i for i, ch in enumerate(text) if ch == "'"]
        for a in apostrophes:
            for start in range(max(done, a - self._longest + 1), a + 1):
                m = self._contraction_re.match(text, start)
                if m:
                    out.append(text[done:start])
                    out.append(self._expand(m))
                    done = m.end()
                    self.stats["contractions_expanded"] += 1
                    break
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)

    def _correct(self, token: str) -> str:
        if token in self._spelled:
            fix = self._spelled[token]
        else:
            found = self.speller.lookup(token, Verbosity.CLOSEST, max_edit_distance=_SPELL_DISTANCE)
            fix = self._spelled[token] = found[0].term if found else None
        self.stats["tokens_spell_checked"] += 1
        if fix is None:
            self.stats["tokens_without_correction"] += 1
            return token
        self.stats["tokens_corrected"] += fix != token
        return fix

    def tokens(self, utterance: str) -> list[str]:
        """The spell-checked tokens of one utterance (`" ".join` gives `utterance_spelled`)."""
        out = self.pretokens(utterance)
        return self.spell(out) if self.spell_check else out

    def spell(self, tokens: list[str]) -> list[str]:
        """Step 8: SymSpell's correction of the tokens outside the vocabulary."""
        vocabulary = self.vocabulary
        return [t if t in vocabulary else self._correct(t) for t in tokens]

    def pretokens(self, utterance: str) -> list[str]:
        """Steps 1-7: the tokens before SymSpell."""
        out: list[str] = []
        for token in word_tokenize(self.clean(utterance)):
            fix = self.token_spelling.get(token)
            if fix is None:
                out.append(token)
                continue
            self.stats["tokens_spelled_manually"] += 1
            out.extend(fix if isinstance(fix, list) else [fix])
        return out
