"""A seeded English grammar with gold part-of-speech tags: the world the default models live in.

The shipped default models are trained only on text from this grammar, so every prompt set the
suites use can be generated from the same world (every word is in the training vocabulary) and
carries gold labels (part of speech, and the role of each pronoun: `` her`` as object or
possessive)::

    >>> from tlprobes.models.training.corpus import generate_document
    >>> doc = generate_document(seed=3)
    >>> doc.sentences[0].words[0].pos in {"PROPN", "PRON", "DET", "ADJ"}
    True
    >>> generate_document(seed=3).text == doc.text     # deterministic from its seed
    True

Tags follow Universal Dependencies (``DET ADJ NOUN PROPN PRON VERB AUX ADP ADV CCONJ SCONJ PART
PUNCT``); each word also has a ``feat``: ``Subj``/``Obj``/``Poss`` for pronouns and possessors,
``Sing``/``Plur`` for nouns, ``""`` otherwise. Half of the documents repeat an earlier
sentence (or two) verbatim, and about a third say a random word list and later say it again
(``Mary said the words red horse Tom cried keys.``): copying those unpredictable spans is what
makes induction heads form.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Word",
    "Sentence",
    "Document",
    "POS_TAGS",
    "generate_sentence",
    "generate_document",
    "generate_documents",
    "corpus_split",
    "vocabulary",
    "prompt_sets",
    "write_prompt_sets",
]

POS_TAGS: tuple[str, ...] = (
    "DET", "ADJ", "NOUN", "PROPN", "PRON", "VERB", "AUX",
    "ADP", "ADV", "CCONJ", "SCONJ", "PART", "PUNCT",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Lexicon
# ---------------------------------------------------------------------------------------------

FEMALE_NAMES = (
    "Mary Anna Sarah Emma Lucy Kate Alice Jane Laura Rose Ella Grace Susan Helen Julia Nora"
).split()
MALE_NAMES = (
    "John Tom James David Peter Paul Mark Sam Jack Ben Henry Luke Frank George Adam Simon"
).split()

# (singular, plural)
_NOUNS_PEOPLE = [
    ("friend", "friends"), ("teacher", "teachers"), ("doctor", "doctors"), ("farmer", "farmers"),
    ("child", "children"), ("man", "men"), ("woman", "women"), ("boy", "boys"), ("girl", "girls"),
    ("king", "kings"), ("queen", "queens"), ("neighbour", "neighbours"), ("student", "students"),
    ("mother", "mothers"), ("father", "fathers"), ("sister", "sisters"), ("brother", "brothers"),
    ("baker", "bakers"), ("singer", "singers"), ("driver", "drivers"),
]  # fmt: skip
_NOUNS_ANIMALS = [
    ("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"), ("fish", "fish"),
    ("rabbit", "rabbits"), ("mouse", "mice"), ("duck", "ducks"), ("cow", "cows"), ("fox", "foxes"),
]  # fmt: skip
_NOUNS_THINGS = [
    ("book", "books"), ("car", "cars"), ("house", "houses"), ("letter", "letters"),
    ("ball", "balls"), ("apple", "apples"), ("cake", "cakes"), ("phone", "phones"), ("bag", "bags"),
    ("boat", "boats"), ("hat", "hats"), ("key", "keys"), ("box", "boxes"), ("cup", "cups"),
    ("chair", "chairs"), ("table", "tables"), ("picture", "pictures"), ("song", "songs"),
    ("story", "stories"), ("coat", "coats"), ("bike", "bikes"), ("flower", "flowers"),
    ("lamp", "lamps"), ("map", "maps"), ("ring", "rings"), ("shoe", "shoes"), ("gift", "gifts"),
    ("bottle", "bottles"), ("basket", "baskets"), ("window", "windows"), ("door", "doors"),
    ("word", "words"),
]  # fmt: skip
_NOUNS_PLACES = [
    ("garden", "gardens"), ("park", "parks"), ("school", "schools"), ("shop", "shops"),
    ("river", "rivers"), ("city", "cities"), ("village", "villages"), ("kitchen", "kitchens"),
    ("room", "rooms"), ("forest", "forests"), ("street", "streets"), ("market", "markets"),
    ("library", "libraries"), ("station", "stations"), ("beach", "beaches"), ("hill", "hills"),
]  # fmt: skip
_NOUNS_ABSTRACT_OBJ = [  # things one can carry, give, show, find (the object slot)
    *_NOUNS_THINGS,
    *_NOUNS_ANIMALS,
]

ADJECTIVES = (
    "big small old new red blue green yellow white black happy sad quiet loud tall short young "
    "bright dark warm cold kind clever strange heavy light soft broken clean dirty lovely "
    "little famous busy lazy brave gentle wild lucky pretty angry"
).split()
_ADJ_PERSON = (
    "happy sad quiet tall short young old kind clever strange famous busy lazy brave gentle "
    "lucky angry tired hungry"
).split()
_ADJ_PRED = (
    "happy sad quiet tired hungry angry busy lucky kind clever brave warm cold old new big small "
    "broken clean dirty lovely strange"
).split()

# transitive verbs: past tense (person or thing objects)
_V_TRANS_PERSON = (
    "saw liked helped called met watched loved visited followed thanked found remembered "
    "knew heard missed told asked taught kissed pushed"
).split()
_V_TRANS_THING = (
    "saw liked found took bought sold carried washed opened closed painted broke kept lost "
    "wanted made read fixed dropped moved"
).split()
_V_READ_OK = {"book", "letter", "story", "map"}  # 'read' only takes these
_V_INTRANS = "slept laughed smiled ran walked arrived left waited sang cried danced worked".split()
_V_DITRANS = "gave showed sent brought handed lent".split()
_V_SAY = "said thought knew hoped".split()
_V_MOTION = "went walked ran drove came".split()  # + to PLACE

PREPS_LOC = "in near behind under beside across".split()
PREPS_MOTION = "to from into".split()
ADVERBS_MANNER = "quickly slowly quietly happily carefully suddenly".split()
ADVERBS_TIME = "yesterday today later again".split()
ADVERBS_DEGREE = ["very", "really"]
SUBORDINATORS = "because when after before while".split()

# pronouns by gender: (subject, object, possessive)
PRONOUNS = {
    "f": ("she", "her", "her"),
    "m": ("he", "him", "his"),
    "p": ("they", "them", "their"),
}
_FIRST_SECOND = [("I", "me", "my"), ("we", "us", "our"), ("you", "you", "your")]


# ---------------------------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """One word with its gold tag: ``Word("her", "PRON", "Poss")``."""

    text: str
    pos: str
    feat: str = ""


@dataclass(frozen=True)
class Sentence:
    """A tagged sentence; ``text`` renders it (capitalised, punctuation attached).

    >>> s = Sentence((Word("John", "PROPN"), Word("saw", "VERB"), Word("her", "PRON", "Obj"),
    ...               Word(".", "PUNCT")))
    >>> s.text
    'John saw her.'
    """

    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        out = ""
        for i, w in enumerate(self.words):
            t = w.text
            if i == 0:
                t = t[:1].upper() + t[1:]
            if i == 0 or w.pos == "PUNCT" or t == "'s":
                out += t
            else:
                out += " " + t
        return out

    def spans(self) -> list[tuple[int, int]]:
        """Character span ``(start, end)`` of each word in ``text``."""
        spans: list[tuple[int, int]] = []
        pos = 0
        for i, w in enumerate(self.words):
            glued = i == 0 or w.pos == "PUNCT" or w.text == "'s"
            if not glued:
                pos += 1
            spans.append((pos, pos + len(w.text)))
            pos += len(w.text)
        return spans


@dataclass(frozen=True)
class Document:
    """Sentences joined by spaces; ``repeats`` lists ``(copy_index, source_index)`` pairs."""

    sentences: tuple[Sentence, ...]
    repeats: tuple[tuple[int, int], ...] = ()

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)


# ---------------------------------------------------------------------------------------------
# Grammar
# ---------------------------------------------------------------------------------------------


@dataclass
class _Person:
    name: str
    gender: str  # "f" | "m"


class _Grammar:
    """Sentence productions over a document's cast (people whose pronouns agree with them)."""

    def __init__(self, rng: random.Random, cast: list[_Person]):
        self.rng = rng
        self.cast = cast
        self.mentioned: list[_Person] = []
        self.first_sg = False

    # -- small helpers ------------------------------------------------------------------------
    def p(self, prob: float) -> bool:
        return self.rng.random() < prob

    def pick(self, seq):  # type: ignore[no-untyped-def]
        return seq[self.rng.randrange(len(seq))]

    # -- noun phrases -------------------------------------------------------------------------
    def _adjs(self, pool: list[str], max_n: int = 2) -> list[Word]:
        n = 0
        r = self.rng.random()
        if r < 0.35:
            n = 1
        elif r < 0.45:
            n = min(2, max_n)
        chosen: list[str] = []
        while len(chosen) < n:
            a = self.pick(pool)
            if a not in chosen:
                chosen.append(a)
        out: list[Word] = []
        for a in chosen:
            if self.p(0.08):
                out.append(Word(self.pick(ADVERBS_DEGREE), "ADV"))
            out.append(Word(a, "ADJ"))
        return out

    def _det(self, plural: bool, starts_vowel: bool) -> list[Word]:
        if plural:
            r = self.rng.random()
            if r < 0.55:
                return [Word("the", "DET")]
            if r < 0.8:
                return [Word(self.pick(["some", "many", "two", "three"]), "DET")]
            return []
        r = self.rng.random()
        if r < 0.55:
            return [Word("the", "DET")]
        if r < 0.85:
            return [Word("an" if starts_vowel else "a", "DET")]
        return [Word(self.pick(["this", "that", "every"]), "DET")]

    def _possessor(self) -> list[Word]:
        """'her' / 'his' / 'their' / 'my' / "Mary's" as a determiner."""
        r = self.rng.random()
        if r < 0.7 and self.cast:
            person = self.pick(self.cast)
            if self.p(0.75):
                return [Word(PRONOUNS[person.gender][2], "PRON", "Poss")]
            return [Word(person.name, "PROPN", "Poss"), Word("'s", "PART")]
        if r < 0.82:
            return [Word("their", "PRON", "Poss")]
        return [Word(self.pick(_FIRST_SECOND)[2], "PRON", "Poss")]

    def common_np(
        self,
        nouns: list[tuple[str, str]],
        *,
        adj_pool: list[str] | None = None,
        poss_prob: float = 0.3,
    ) -> list[Word]:
        sing, plur = self.pick(nouns)
        plural = self.p(0.2)
        noun = Word(plur if plural else sing, "NOUN", "Plur" if plural else "Sing")
        adjs = self._adjs(adj_pool or ADJECTIVES)
        if self.p(poss_prob):
            det = self._possessor()
        else:
            first = (adjs[0].text if adjs else noun.text)[0]
            det = self._det(plural, first in "aeiou")
        np_ = det + adjs + [noun]
        if self.p(0.06):  # a short relative clause: 'the dog that she saw'
            person = noun.text in _people_words()
            rel = "who" if person else self.pick(["that", "which"])
            verbs = _V_TRANS_PERSON if person else [v for v in _V_TRANS_THING if v != "read"]
            np_ += [Word(rel, "PRON")]
            np_ += self.subject_pronoun_or_name() + [Word(self.pick(verbs), "VERB")]
        return np_

    def person_np(self, role: str) -> list[Word]:
        """A person: name, pronoun (agreeing with an earlier mention), or 'the tall teacher'."""
        r = self.rng.random()
        if r < 0.45 or not self.mentioned:
            person = self.pick(self.cast)
            self.mentioned.append(person)
            return [Word(person.name, "PROPN", role)]
        if r < 0.8:
            person = self.pick(self.mentioned[-3:])
            subj, obj, _ = PRONOUNS[person.gender]
            return [Word(subj if role == "Subj" else obj, "PRON", role)]
        if r < 0.85:
            subj, obj, _ = self.pick(_FIRST_SECOND)
            return [Word(subj if role == "Subj" else obj, "PRON", role)]
        return self.common_np(_NOUNS_PEOPLE, adj_pool=_ADJ_PERSON, poss_prob=0.4)

    def subject_pronoun_or_name(self) -> list[Word]:
        if self.mentioned and self.p(0.6):
            person = self.pick(self.mentioned[-3:])
            return [Word(PRONOUNS[person.gender][0], "PRON", "Subj")]
        person = self.pick(self.cast)
        return [Word(person.name, "PROPN", "Subj")]

    def thing_np(self) -> list[Word]:
        return self.common_np(_NOUNS_ABSTRACT_OBJ, poss_prob=0.35)

    def place_np(self) -> list[Word]:
        return self.common_np(_NOUNS_PLACES, poss_prob=0.2)

    def subject(self) -> list[Word]:
        r = self.rng.random()
        if r < 0.75:
            return self.person_np("Subj")
        if r < 0.9:
            return self.common_np(_NOUNS_ANIMALS, poss_prob=0.4)
        return self.common_np(_NOUNS_THINGS, poss_prob=0.4)

    # -- verb phrases -------------------------------------------------------------------------
    def _aux(self, plural: bool) -> list[Word]:
        forms = ["were", "are"] if plural else ["was", "am"] if self.first_sg else ["was", "is"]
        return [Word(self.pick(forms), "AUX")]

    def vp(self, animate: bool, depth: int, plural: bool = False) -> list[Word]:
        r = self.rng.random()
        if not animate:
            if r < 0.5:
                return self._aux(plural) + self._pred_adj()
            return [Word(self.pick(["fell", "moved", "stayed", "waited"]), "VERB")] + self.pp()
        if r < 0.3:
            verb = Word(self.pick(_V_TRANS_PERSON), "VERB")
            return [verb] + self.person_np("Obj")
        if r < 0.5:
            obj = self.thing_np()
            pool = (
                _V_TRANS_THING
                if obj[-1].text.rstrip("s") in _V_READ_OK
                else [v for v in _V_TRANS_THING if v != "read"]
            )
            return [Word(self.pick(pool), "VERB")] + obj
        if r < 0.62:
            verb = Word(self.pick(_V_DITRANS), "VERB")
            if self.p(0.5):
                return [verb] + self.person_np("Obj") + self.thing_np()
            return [verb] + self.thing_np() + [Word("to", "ADP")] + self.person_np("Obj")
        if r < 0.72:
            return [Word(self.pick(_V_INTRANS), "VERB")] + (self.adverb() if self.p(0.4) else [])
        if r < 0.8:
            return [Word(self.pick(_V_MOTION), "VERB"), Word("to", "ADP")] + self.place_np()
        if r < 0.88:
            return self._aux(plural) + self._pred_adj()
        if r < 0.93 and depth < 1:
            return [Word(self.pick(_V_SAY), "VERB"), Word("that", "SCONJ")] + self.clause(depth + 1)
        verb = Word(self.pick(_V_TRANS_PERSON), "VERB")
        return [verb] + self.person_np("Obj")

    def _pred_adj(self) -> list[Word]:
        out = []
        if self.p(0.25):
            out.append(Word(self.pick(ADVERBS_DEGREE), "ADV"))
        return out + [Word(self.pick(_ADJ_PRED), "ADJ")]

    def adverb(self) -> list[Word]:
        return [Word(self.pick(ADVERBS_MANNER + ADVERBS_TIME), "ADV")]

    def pp(self) -> list[Word]:
        return [Word(self.pick(PREPS_LOC), "ADP")] + self.place_np()

    def clause(self, depth: int = 0) -> list[Word]:
        subj = self.subject()
        animate = (
            subj[-1].pos in {"PROPN", "PRON"}
            or subj[-1].text in _people_words()
            or (subj[-1].text in _animal_words())
        )
        head = subj[-1]
        plural = head.feat == "Plur" or head.text in {"they", "we", "you"}
        self.first_sg = head.text == "I"
        words = subj + self.vp(animate, depth, plural)
        if self.p(0.2):
            words += self.pp()
        if self.p(0.1):
            words += self.adverb()
        return words

    def sentence(self) -> Sentence:
        words = self.clause()
        r = self.rng.random()
        if r < 0.15:
            words += [Word(self.pick(SUBORDINATORS), "SCONJ")] + self.clause(1)
        elif r < 0.25:
            words += [Word(self.pick(["and", "but"]), "CCONJ")] + self.clause(1)
        elif r < 0.3:  # fronted subordinate clause: 'When she arrived, John smiled.'
            sub = [Word(self.pick(SUBORDINATORS), "SCONJ")] + self.clause(1)
            words = sub + [Word(",", "PUNCT")] + self.clause()
        return Sentence(tuple(words) + (Word(".", "PUNCT"),))


_PLURALS: frozenset[str] = frozenset(
    p for pairs in (_NOUNS_PEOPLE, _NOUNS_ANIMALS, _NOUNS_THINGS, _NOUNS_PLACES) for _, p in pairs
)
_LIST_POOLS: list[tuple[str, list[str]]] = [
    ("PROPN", FEMALE_NAMES + MALE_NAMES),
    (
        "NOUN",
        [
            w
            for pairs in (_NOUNS_PEOPLE, _NOUNS_ANIMALS, _NOUNS_THINGS, _NOUNS_PLACES)
            for pair in pairs
            for w in pair
            if w != "fish"
        ],
    ),
    ("NOUN", [s_ for pairs in (_NOUNS_ANIMALS, _NOUNS_THINGS) for s_, _ in pairs]),
    ("ADJ", ADJECTIVES),
    ("VERB", _V_TRANS_PERSON + _V_TRANS_THING + _V_INTRANS + _V_DITRANS),
    ("ADV", ADVERBS_MANNER),
]
_PEOPLE_WORDS: frozenset[str] = frozenset(w for pair in _NOUNS_PEOPLE for w in pair)
_ANIMAL_WORDS: frozenset[str] = frozenset(w for pair in _NOUNS_ANIMALS for w in pair)


def _people_words() -> frozenset[str]:
    return _PEOPLE_WORDS


def _animal_words() -> frozenset[str]:
    return _ANIMAL_WORDS


# ---------------------------------------------------------------------------------------------
# Public generators
# ---------------------------------------------------------------------------------------------


def _rng(seed: int | str, stream: str) -> random.Random:
    return random.Random(f"tlprobes-corpus/{seed}/{stream}")


def _cast(rng: random.Random, n: int) -> list[_Person]:
    people = [_Person(n_, "f") for n_ in FEMALE_NAMES] + [_Person(n_, "m") for n_ in MALE_NAMES]
    return rng.sample(people, n)


def generate_sentence(seed: int | str, *, rng: random.Random | None = None) -> Sentence:
    """One tagged sentence from a seed (or from a caller's ``random.Random``).

    >>> generate_sentence(0) == generate_sentence(0)
    True
    """
    r = rng if rng is not None else _rng(seed, "sentence")
    return _Grammar(r, _cast(r, 3)).sentence()


def _word_list(g: _Grammar) -> Sentence:
    """'Mary said the words red horse Tom cried keys.': a random word list, later repeated."""
    speaker = g.pick(g.cast)
    words = [
        Word(speaker.name, "PROPN", "Subj"),
        Word(g.pick(["said", "wrote", "read"]), "VERB"),
        Word("the", "DET"),
        Word("words", "NOUN", "Plur"),
    ]
    for _ in range(g.rng.randint(4, 12)):
        pos, pool = g.pick(_LIST_POOLS)
        text = g.pick(pool)
        words.append(Word(text, pos, "Plur" if pos == "NOUN" and text in _PLURALS else ""))
    return Sentence((*words, Word(".", "PUNCT")))


def _document(rng: random.Random, repeat_prob: float, list_prob: float = 0.3) -> Document:
    g = _Grammar(rng, _cast(rng, rng.choice([2, 3, 3, 4])))
    n = rng.randint(3, 9)
    sents: list[Sentence] = [g.sentence() for _ in range(n)]
    repeats: list[tuple[int, int]] = []
    if rng.random() < list_prob:
        # a random word list and, a few sentences later, the same list (maybe another speaker)
        lst = _word_list(g)
        i = rng.randrange(0, n)
        sents.insert(i, lst)
        j = min(len(sents), i + 1 + rng.randint(0, 3))
        if rng.random() < 0.5:
            again = lst
        else:
            other = g.pick(g.cast)
            again = Sentence((Word(other.name, "PROPN", "Subj"), *lst.words[1:]))
        sents.insert(j, again)
    if rng.random() < repeat_prob:
        # repeat one or two earlier sentences verbatim, possibly after some new ones
        k = 2 if rng.random() < 0.3 and n >= 2 else 1
        src = rng.randrange(0, n - k + 1)
        gap = [g.sentence() for _ in range(rng.randint(0, 2))]
        sents.extend(gap)
        for j in range(k):
            repeats.append((len(sents), src + j))
            sents.append(sents[src + j])
    return Document(tuple(sents), tuple(repeats))


def generate_document(
    seed: int | str, *, repeat_prob: float = 0.5, list_prob: float = 0.3
) -> Document:
    """One document (3 to 14 sentences about a small cast) from a seed."""
    return _document(_rng(seed, "document"), repeat_prob, list_prob)


def generate_documents(
    n: int,
    seed: int | str,
    *,
    stream: str = "train",
    repeat_prob: float = 0.5,
    list_prob: float = 0.3,
) -> Iterator[Document]:
    """``n`` documents from one seeded stream (``"train"``, ``"heldout"``, ...).

    >>> [d.text for d in generate_documents(2, 0)] == [d.text for d in generate_documents(2, 0)]
    True
    """
    rng = _rng(seed, stream)
    for _ in range(n):
        yield _document(rng, repeat_prob, list_prob)


def corpus_split(n_train: int, n_heldout: int, seed: int | str = 0) -> tuple[list[str], list[str]]:
    """Train and held-out document texts, from independent streams of one seed.

    >>> train, held = corpus_split(3, 2, seed=0)
    >>> len(train), len(held)
    (3, 2)
    """
    train = [d.text for d in generate_documents(n_train, seed, stream="train")]
    held = [d.text for d in generate_documents(n_heldout, seed, stream="heldout")]
    return train, held


def vocabulary() -> dict[str, set[str]]:
    """Every word the grammar can emit, by tag (lower-case; sentence starts are capitalised)."""
    vocab: dict[str, set[str]] = {t: set() for t in POS_TAGS}
    vocab["PROPN"] |= set(FEMALE_NAMES) | set(MALE_NAMES)
    for pairs in (_NOUNS_PEOPLE, _NOUNS_ANIMALS, _NOUNS_THINGS, _NOUNS_PLACES):
        for s, p in pairs:
            vocab["NOUN"] |= {s, p}
    vocab["ADJ"] |= set(ADJECTIVES) | set(_ADJ_PERSON) | set(_ADJ_PRED)
    vocab["VERB"] |= set(
        _V_TRANS_PERSON
        + _V_TRANS_THING
        + _V_INTRANS
        + _V_DITRANS
        + _V_SAY
        + _V_MOTION
        + ["fell", "moved", "stayed", "waited", "wrote"]
    )
    vocab["AUX"] |= {"was", "is", "were", "are", "am"}
    vocab["ADP"] |= set(PREPS_LOC + PREPS_MOTION) | {"to"}
    vocab["ADV"] |= set(ADVERBS_MANNER + ADVERBS_TIME + ADVERBS_DEGREE)
    vocab["SCONJ"] |= set(SUBORDINATORS) | {"that"}
    vocab["CCONJ"] |= {"and", "but"}
    vocab["DET"] |= {"the", "a", "an", "this", "that", "every", "some", "many", "two", "three"}
    vocab["PRON"] |= {w for trio in [*PRONOUNS.values(), *_FIRST_SECOND] for w in trio}
    vocab["PRON"] |= {"who", "that", "which"}
    vocab["PART"] |= {"'s"}
    vocab["PUNCT"] |= {".", ","}
    return vocab


# ---------------------------------------------------------------------------------------------
# Prompt sets for the suites
# ---------------------------------------------------------------------------------------------


def _her_role(s: Sentence) -> str | None:
    """'Obj' or 'Poss' for the first non-initial ' her' in ``s``; None when it has none."""
    for i, w in enumerate(s.words):
        if i > 0 and w.text == "her":
            return w.feat
    return None


def prompt_sets(
    seed: int = 0,
    *,
    n_her: int = 60,
    n_pos: int = 60,
    n_general: int = 24,
) -> dict[str, list[tuple[str, ...]]]:
    """Prompt sets drawn from the grammar: rows for the files in ``probes/prompts/``.

    Returns ``{"her_sentences": [(text, role)], "pos_words": [(text, word, pos, word_index)],
    "general": [(text,)]}``; ``her`` rows (6 to 16 words, one `` her``) alternate object and
    possessive uses; ``pos_words`` alternates NOUN and ADJ targets (each occurs once in its
    sentence, never first).

    >>> sets = prompt_sets(0, n_her=4, n_pos=4, n_general=2)
    >>> [role for _, role in sets["her_sentences"]]
    ['Obj', 'Poss', 'Obj', 'Poss']
    """
    rng = _rng(seed, "prompts")
    seen: set[str] = set()

    def fresh(max_words: int = 16) -> Sentence:
        while True:
            s = _Grammar(rng, _cast(rng, 3)).sentence()
            if s.text not in seen and len(s.words) <= max_words:
                return s

    her: list[tuple[str, ...]] = []
    want = "Obj"
    while len(her) < n_her:
        s = fresh()
        count = sum(w.text == "her" for w in s.words)
        if _her_role(s) == want and count == 1 and len(s.words) >= 6:
            her.append((s.text, want))
            seen.add(s.text)
            want = "Poss" if want == "Obj" else "Obj"

    pos_rows: list[tuple[str, ...]] = []
    want = "NOUN"
    while len(pos_rows) < n_pos:
        s = fresh()
        texts = [w.text for w in s.words]
        cands = [
            i for i, w in enumerate(s.words) if i > 0 and w.pos == want and texts.count(w.text) == 1
        ]
        if cands:
            i = cands[rng.randrange(len(cands))]
            pos_rows.append((s.text, s.words[i].text, want, str(i)))
            seen.add(s.text)
            want = "ADJ" if want == "NOUN" else "NOUN"

    general: list[tuple[str, ...]] = []
    while len(general) < n_general:
        s = fresh()
        if len(s.words) >= 6:
            general.append((s.text,))
            seen.add(s.text)
    return {"her_sentences": her, "pos_words": pos_rows, "general": general}


#: prompt file name -> the :func:`prompt_sets` key it is written from
PROMPT_FILES = {
    "her_sentences.txt": "her_sentences",
    "her_roles.tsv": "her_sentences",
    "pos_words.tsv": "pos_words",
    "general.txt": "general",
}
_TSV_HEADERS = {
    "her_roles.tsv": ("sentence", "role"),
    "pos_words.tsv": ("sentence", "word", "pos", "word_index"),
}


def write_prompt_sets(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write the suites' prompt files (``probes/prompts/``) from :func:`prompt_sets`.

    * ``her_sentences.txt``: one sentence per line, each with exactly one `` her``
      (alternately object and possessive);
    * ``her_roles.tsv``: the same sentences with the gold role (``Obj``/``Poss``);
    * ``pos_words.tsv``: sentence, target word, gold POS (``NOUN``/``ADJ``), word index;
    * ``general.txt``: assorted sentences for geometry and the logit lens.

    >>> import tempfile
    >>> [p.name for p in write_prompt_sets(tempfile.mkdtemp())][:2]
    ['her_sentences.txt', 'her_roles.tsv']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = prompt_sets(seed)
    written = []
    for fname, key in PROMPT_FILES.items():
        rows = sets[key]
        if fname.endswith(".txt"):
            text = "".join(r[0] + "\n" for r in rows)
        else:
            header = _TSV_HEADERS[fname]
            text = (
                "\t".join(header) + "\n" + "".join("\t".join(r[: len(header)]) + "\n" for r in rows)
            )
        (out / fname).write_text(text)
        written.append(out / fname)
    return written
