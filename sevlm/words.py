"""The words of the training explanations, each as its GPT-2 pieces, and the prefix tree over them
that `decoding.corpus_words` walks, so a small corpus-vocabulary model spells only words it was
trained on. Recorded with the corpus vocabulary (`sevlm.vocab.VocabMap.words`).
"""

from __future__ import annotations

from typing import Sequence

from sevlm.errors import DataError


def explanation_words(
    tokenizer, texts: Sequence[str], prompt: str, keep: set[int] | None = None
) -> list[tuple[int, ...]]:
    """The words of the explanations of sequence texts ("<prompt> X because ..."), each as its
    GPT-2 pieces in context: a piece whose BPE string starts with a space ("Ġ") starts a word,
    the others continue it. Words with a piece outside `keep` are left out."""
    because = tokenizer.encode(" because")[0]
    n_prompt = len(tokenizer.encode(prompt))
    starts = word_start_ids(tokenizer)
    words: set[tuple[int, ...]] = set()
    for start in range(0, len(texts), 4096):
        for row in tokenizer(list(texts[start : start + 4096]), add_special_tokens=False)["input_ids"]:
            try:
                row = row[row.index(because, n_prompt) + 1 :]
            except ValueError:
                continue
            word: list[int] = []
            for t in row + [None]:
                if t is None or t in starts:
                    if word and (keep is None or all(i in keep for i in word)):
                        words.add(tuple(word))
                    word = []
                if t is not None:
                    word.append(t)
    return sorted(words)


def word_start_ids(tokenizer) -> set[int]:
    """GPT-2 ids whose piece starts a word: the BPE strings that begin with a space ("Ġ")."""
    return {i for tok, i in tokenizer.get_vocab().items() if tok.startswith("Ġ")}


class WordTrie:
    """The explanation words a corpus vocabulary knows, as a prefix tree over compact ids: which
    pieces may follow a word begun so far (`decoding.corpus_words`)."""

    def __init__(self, vocab, tokenizer, eos: int):  # vocab: a sevlm.vocab.VocabMap
        if vocab.words is None:
            raise DataError(
                "the corpus vocabulary records no words (trained before decoding.corpus_words existed); "
                "retrain, or decode without decoding.corpus_words"
            )
        self.starts = {vocab.compact(i) for i in word_start_ids(tokenizer) if i in vocab}
        self.children: dict[tuple[int, ...], set[int]] = {}
        self.complete: set[tuple[int, ...]] = set()
        for w in vocab.words:
            c = tuple(vocab.compact(t) for t in w)
            for k in range(len(c)):
                self.children.setdefault(c[:k], set()).add(c[k])
            self.complete.add(c)
        self.first = self.children.get((), set())
        self.eos = eos
        self._cache: dict[tuple[int, ...], list[int] | None] = {}

    def allowed(self, explanation: Sequence[int]) -> list[int] | None:
        """Ids that may come next after the explanation tokens so far (None: no constraint, the
        text so far is off the tree): pieces that continue the current word, and once it is a
        whole word, the first piece of any word or the end of text."""
        last = max((i for i, t in enumerate(explanation) if t in self.starts), default=None)
        prefix = tuple(explanation[last:]) if last is not None else tuple(explanation)
        if prefix not in self._cache:
            if not prefix:
                out = self.first
            elif prefix in self.children or prefix in self.complete:
                out = set(self.children.get(prefix, ()))
                if prefix in self.complete:
                    out |= self.first | {self.eos}
            else:
                out = None
            self._cache[prefix] = None if out is None else sorted(out)
        return self._cache[prefix]
