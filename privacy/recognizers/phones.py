"""PHONE_NUMBER for every region a jurisdiction of the bundle can name, in any format.

Presidio's `PhoneRecognizer` runs `phonenumbers.PhoneNumberMatcher` once per region
over the whole text and only finds numbers that are valid in one of eight regions
(recall 0.46 on generated international numbers). Here a phone-shaped candidate
(7 to 15 digits with the separators people type: spaces, dots, dashes, brackets,
a leading + or 00, an extension) is read once per region, cheaply, and scored:

- valid in a listed region, or possible with a + / 00 prefix:     0.6
- a possible number for one of them (right length, unassigned):  0.45
- phone-shaped only:                                              0.3 (a context word
  such as "phone", "call", "mobile", "fax" lifts it over the threshold)

Dates, IPv4 addresses and long digit runs without separators (card and account
numbers, which their own recognizers name) are not candidates.
"""

from __future__ import annotations

import re

import phonenumbers
from phonenumbers import NumberParseException
from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from privacy.recognizers.result import finding, unescape_newlines

# The EU and EEA member states, the UK and Switzerland, North America, India, and the
# other large markets a bundle may name. Order matters only for speed (first valid wins).
REGIONS = (
    "US", "GB", "CA", "IN", "DE", "FR", "IT", "ES", "NL", "PL", "BE", "AT", "CH", "SE",
    "DK", "FI", "NO", "IE", "PT", "GR", "CZ", "SK", "HU", "RO", "BG", "HR", "SI", "EE",
    "LV", "LT", "LU", "MT", "CY", "IS", "LI", "AU", "NZ", "BR", "MX", "IL", "JP", "SG",
    "ZA",
)  # fmt: skip

VALID_SCORE = 0.6
POSSIBLE_SCORE = 0.45
SHAPE_SCORE = 0.3

CONTEXT = [
    "phone", "telephone", "tel", "cell", "cellphone", "mobile", "call", "called",
    "fax", "office", "desk", "home", "work", "landline", "dial", "text", "sms", "whatsapp",
    "reach", "contact", "message", "messages", "ring",
]  # fmt: skip

_CANDIDATE = re.compile(
    r"(?<![\w+.\-/:])(?:\+|00)?\(?\d[\d()\-. /\t]{4,22}\d\)?"
    r"(?:[ \t]?(?:x|ext\.?|extension|#)[ \t]?\d{1,6})?(?![\w.]?\d|:\d)"
)
_DATE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./](?:\d{4}|\d{2})")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_EXTENSION = re.compile(r"[ \t]?(?:x|ext\.?|extension|#)[ \t]?\d{1,6}$")


def score_number(candidate: str, regions: tuple[str, ...] = REGIONS) -> float | None:
    """The score of a phone-shaped string, or None when it is not one."""
    number = _EXTENSION.sub("", candidate).strip()
    digits = sum(c.isdigit() for c in number)
    if not 7 <= digits <= 15 or _DATE.fullmatch(number) or _IPV4.fullmatch(number):
        return None
    if number.isdigit() and not 10 <= digits <= 11:
        return None  # a bare digit run of another length: an id, passport or card number
    international = number.startswith(("+", "00"))
    possible = False
    for region in (None,) if international else regions:
        try:
            parsed = phonenumbers.parse(
                "+" + number[2:] if number.startswith("00") else number, region
            )
        except NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed) or (
            international and phonenumbers.is_possible_number(parsed)
        ):
            return VALID_SCORE
        possible = possible or phonenumbers.is_possible_number(parsed)
    return POSSIBLE_SCORE if possible else SHAPE_SCORE


class WorldPhoneRecognizer(LocalRecognizer):
    """PHONE_NUMBER in the formats of `REGIONS` and in international form."""

    def __init__(self, supported_language: str = "en", regions: tuple[str, ...] = REGIONS) -> None:
        self.regions = regions
        super().__init__(
            supported_entities=["PHONE_NUMBER"],
            supported_language=supported_language,
            name="WorldPhoneRecognizer",
            context=list(CONTEXT),
        )

    def load(self) -> None:
        pass

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if "PHONE_NUMBER" not in entities:
            return []
        found = []
        text = unescape_newlines(text)
        for match in _CANDIDATE.finditer(text):
            value = match.group().rstrip(" \t-./(")
            if value.count("(") != value.count(")"):
                value = value.lstrip("(") if value.startswith("(") else value
            score = score_number(value, self.regions)
            if score is None:
                continue
            start = match.start() + match.group().index(value)
            found.append(finding(self, "PHONE_NUMBER", start, start + len(value), score))
        return found
