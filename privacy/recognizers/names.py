"""PERSON from a name gazetteer and cue words, beside (never instead of) the NER model.

spaCy's small English model misses most names that are not English ("Csanád",
"Björgvinsdóttir"), single first names and lower-case names, and tags many full names
as organisations. Three rules add what it misses:

1. a run of capitalised words that starts with (or holds) a known first or last name,
   initials and particles ("van", "de") allowed inside: "Benedykta G. Kucharska";
2. a single capitalised known name that is not more often an ordinary English word
   ("Sven" yes, "Will" no);
3. whatever follows a cue ("my name is", "Mr", "Name:", "call me"), in any case:
   "my name is sofia lindqvist".

The gazetteer (`data/names.tsv`, built by `build_names`) holds ~48,000 first and last
names of 86 Faker locales; words that are more often ordinary English words carry a
flag and count only next to another name or after a cue.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from privacy.recognizers.result import finding, unescape_newlines

DATA = Path(__file__).with_name("data") / "names.tsv"

# Scores against the NER model's 0.8: a cue or a full name from the gazetteer beats its
# guess of the same words (it tags many foreign names as places or organisations); a
# lone first name beats it inside a sentence, a lone last name or a sentence's first
# word does not.
CUE_SCORE = 0.9
FULL_SCORE = 0.85
FIRST_NAME_SCORE = 0.82
SINGLE_SCORE = 0.7

_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-](?![sS]\b)[^\W\d_]+)*\.?")
# A capitalised run followed by one of these is a company, not a person.
_COMPANY = re.compile(
    r"[ \t,]*(?:Inc|Ltd|LLC|LLP|Corp|Corporation|Co|Company|Group|Holdings?|Trust|Bank|Fund|"
    r"PLC|plc|AG|GmbH|SA|NV|SpA|SPA|Limited|Partners|Capital|Industries|International|"
    r"Enterprises?|Technologies|Systems|Foundation|Association|University|Institute)\b"
)
_CUE = re.compile(
    r"(?i:\b(?:my|his|her|their|the|your|full|first|last|maiden|sur)?\s*name\s*(?:is|was|:)"
    r"|\bnamed|\bcalled|\bcalls?\s+me|\bknown\s+as|\bname's|\bi\s+am|\bi'm|\bthis\s+is|\bsigned|\bregards,?"
    r"|\bsincerely,?|\bdear|\bhi|\bhello|\bcontact\s+person\s*:?|\bpatient\s*:?|\bguardian"
    r"|\b(?:mr|mrs|ms|miss|mx|dr|prof|sir|madam|mister|señor|sr|sra|herr|frau|mme|mlle|m)\.?)"
    r"(?=\s)"
)
# Lower-case words that never continue a name.
_PARTICLES = frozenset(
    """van von der den de del della di da dos das du des la le ten ter bin ibn al el y e""".split()  # noqa: SIM905
)
# Capitalised words that are listed somewhere as a name but in English text are days,
# months, languages or nationalities.
_NOT_NAMES = frozenset(
    """monday tuesday wednesday thursday friday saturday sunday january february march april
    june july august september october november december english french german spanish
    italian dutch danish swedish norwegian finnish polish czech greek russian chinese
    japanese korean indian american british irish scottish welsh canadian mexican brazilian
    portuguese turkish arabic hebrew hungarian romanian bulgarian croatian serbian slovak
    slovenian estonian latvian lithuanian icelandic swiss austrian belgian australian
    african european asian latin christian muslim jewish catholic god lord king queen
    prince princess street road avenue""".split()  # noqa: SIM905
)


# After a cue only: words that end a name even when they are capitalised.
_STOP = frozenset(
    """a an the and or but so if to of in on at by for from with as is are was were be been
    not no yes i me my we our you your he she it they them his her its their this that
    there here what who how why when where which will would can could shall should may
    might must do does did have has had just very really also too please thanks thank hello
    hi dear sir madam ok okay""".split()  # noqa: SIM905
)
_BLOCKED = _NOT_NAMES | _STOP


@dataclass(frozen=True)
class Gazetteer:
    first: frozenset[str]
    last: frozenset[str]
    common: frozenset[str]  # names more often ordinary English words

    def known(self, word: str) -> bool:
        key = word.casefold()
        return (key in self.first or key in self.last) and key not in _BLOCKED

    def strong(self, word: str) -> bool:
        return self.known(word) and word.casefold() not in self.common


@functools.cache
def gazetteer() -> Gazetteer:
    first: set[str] = set()
    last: set[str] = set()
    common: set[str] = set()
    for line in DATA.read_text(encoding="utf-8").splitlines():
        name, kinds, flag = line.split("\t")
        if "F" in kinds:
            first.add(name)
        if "L" in kinds:
            last.add(name)
        if flag == "1":
            common.add(name)
    return Gazetteer(frozenset(first), frozenset(last), frozenset(common))


def _capitalised(word: str) -> bool:
    return (word[:1].isupper() and not word.isupper()) or (len(word) <= 2 and word[:1].isupper())


def _initial(word: str) -> bool:
    return len(word.rstrip(".")) == 1 and word[:1].isupper()


class NameRecognizer(LocalRecognizer):
    """PERSON from the gazetteer and cue words (see the module doc)."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entities=["PERSON"],
            supported_language=supported_language,
            name="NameGazetteerRecognizer",
        )

    def load(self) -> None:
        self.names = gazetteer()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if "PERSON" not in entities:
            return []
        text = unescape_newlines(text)
        words = [_word(m) for m in _WORD.finditer(text)]
        found: list[tuple[int, int, float]] = []
        found += self._runs(text, words)
        found += self._after_cues(text, words)
        return [finding(self, "PERSON", start, end, score) for start, end, score in found]

    def _joined(self, text: str, left: tuple[int, int, str], right: tuple[int, int, str]) -> bool:
        """Two words of one name: only spaces (or an initial's dot) between them."""
        gap = text[left[1] : right[0]]
        return 0 < len(gap) <= 2 and gap.strip(" .") == ""

    def _runs(self, text: str, words: list[tuple[int, int, str]]) -> list[tuple[int, int, float]]:
        found = []
        i = 0
        while i < len(words):
            start, end, word = words[i]
            if not (_capitalised(word) and self.names.known(word)):
                i += 1
                continue
            j = i
            parts = [word]
            while j + 1 < len(words) and self._joined(text, words[j], words[j + 1]):
                nxt = words[j + 1][2]
                if (
                    _capitalised(nxt)
                    or _initial(nxt)
                    or (nxt in _PARTICLES and j + 2 < len(words) and _capitalised(words[j + 2][2]))
                ):
                    parts.append(nxt)
                    j += 1
                else:
                    break
            while len(parts) > 1 and not _capitalised(parts[-1]) and not _initial(parts[-1]):
                parts.pop()
                j -= 1
            names = [p for p in parts if len(p) > 1]
            strong = sum(self.names.strong(p) for p in names)
            known = sum(self.names.known(p) for p in names)
            if _COMPANY.match(text, words[j][1]):
                pass
            elif len(names) >= 2 and (strong >= 1 or known >= 2):
                found.append((start, words[j][1], FULL_SCORE))
            elif len(parts) == 1 and strong == 1:
                first = word.casefold() in self.names.first
                inside = not _sentence_word(text, start)
                score = FIRST_NAME_SCORE if first and inside else SINGLE_SCORE
                found.append((start, end, score))
            i = j + 1
        return found

    def _after_cues(
        self, text: str, words: list[tuple[int, int, str]]
    ) -> list[tuple[int, int, float]]:
        found = []
        for cue in _CUE.finditer(text):
            following = [w for w in words if w[0] >= cue.end()][:4]
            if not following or text[cue.end() : following[0][0]].strip(" :,\t") != "":
                continue
            taken: list[tuple[int, int, str]] = []
            for word in following:
                if taken and not self._joined(text, taken[-1], word):
                    break
                lower = word[2].casefold()
                if lower in _STOP and not (taken and _initial(word[2])):
                    break
                if not (self.names.strong(word[2]) or _capitalised(word[2]) or _initial(word[2])):
                    break
                taken.append(word)
            if taken and any(len(w[2]) > 1 for w in taken):
                found.append((taken[0][0], taken[-1][1], CUE_SCORE))
        return found


def _word(match: re.Match[str]) -> tuple[int, int, str]:
    """A word without its full stop, unless it is an initial ("G.")."""
    word = match.group()
    if word.endswith(".") and len(word) > 2:
        return match.start(), match.end() - 1, word[:-1]
    return match.start(), match.end(), word.rstrip(".")


def _sentence_word(text: str, start: int) -> bool:
    """The first word of a sentence is capitalised whatever it is."""
    before = text[:start].rstrip(" \t\"'“(")
    return not before or before[-1] in ".!?\n"
