"""LOCATION: street addresses in many countries' shapes, countries, states and cue words.

The NER model finds well-known cities and countries but almost no street address
(recall 0.15 measured). An address is a shape, not a name, so rules find it:

1. a street line: house number + name + street type ("3240 Meadow Drive"), a street
   word before the name ("Via Pasquale Scura 127", "ul. Asnyka Adama 82", "Rue du
   Niger"), a name with a street suffix and a number ("Kronwiesenweg 95",
   "Ulriksholmvej 46"), number + name + number ("77780 Luite tee 87"), a P.O. box or a
   military address ("Unit 9363 Box 8546", "APO AE 09123");
2. an address block: from a street line on, the parts that follow it separated by
   commas or line breaks (unit, city, state, country, postcode) join the span, so
   the whole address is one redaction;
3. places: a country or US state by name, "City, Country" / "City, ST", a postcode
   after "ZIP" / "postcode", and capitalised words after a living/moving/origin cue
   ("lives in Koidu", "moved here from Martna").

Country names come from the `phonenumbers` package's region names (English), US
states are listed here: closed sets, not a guess at cities.
"""

from __future__ import annotations

import functools
import re

import phonenumbers.geodata.locale as phone_locale
from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from privacy.recognizers.result import finding, unescape_newlines

ADDRESS_SCORE = 0.9  # above the NER model's 0.85: an address beats a PERSON guess inside it
PLACE_SCORE = 0.85
CUE_SCORE = 0.86  # over a lone NER PERSON guess: "moved here from Martna"
WEAK_SCORE = 0.55

_UP = "A-ZÀ-ÖØ-Þ\u0100-\u017f\u0386-\u03ab\u0400-\u042f"
# A capitalised word: letters, apostrophes, dots, hyphens; never digits ("NW1" is a postcode).
NAME = rf"(?:[{_UP}](?:[^\W\d_]|['\u2019.-])*(?!\w))"
PARTICLE = (
    r"(?:de|del|della|di|da|do|dos|das|du|des|la|le|les|el|van|von|der|den|y|e|of|the|and|"
    r"on|upon|sur)\b"
)
NUM = r"(?:\d{1,6}[A-Za-z]?(?:[/-]\d{1,4}[A-Za-z]?)?)"
SEP = r"(?:[ \t]*(?:,|\\n|\n|\r\n)[ \t]*|[ \t]+)+"

_TYPES_FULL = (
    "street|avenue|road|boulevard|lane|drive|court|place|square|terrace|way|parkway|highway|"
    "freeway|expressway|circle|crescent|close|row|trail|alley|plaza|grove|gardens|park|walk|"
    "path|mews|loop|pike|turnpike|crossing|heights|hill|hills|ridge|view|vista|green|glen|"
    "estates?|commons|creek|bend|cove|harbou?r|landing|meadows?|fields?|wharf|quay|parade|"
    "esplanade|promenade|causeway|embankment|rise|junction|spur|manor|brook|springs?|"
    "station|points?|villas?|vale|valley|lake|shores?|island|isle|mount|mountain|forest|oval|"
    "hollow|orchard|pines|port|ranch|river|route|summit|trace|track|tunnel|union|viaduct|"
    "ville|wells?|ways|center|centre|dale|flats?|fork|ford|fort|garden|gateway|haven|knolls?|"
    "ferry|falls|extension|divide|club|cliffs?|camp|burgs?|bluffs?|beach|bayou|arcade|alley"
)
_TYPES_ABBR = (
    r"st|ave|av|rd|blvd|ln|dr|ct|pl|sq|ter|pkwy|hwy|cir|cres|trl|aly|plz|gdns|xing|pt|hts|"
    r"mt|ste|fwy|expy|tpke|crk|cv|ests?|grv|jct|lk|mdws?|pass|sta|vw|vly|vlg"
)
_SUFFIXES = (
    "straße|strasse|stasse|str|gasse|weg|platz|allee|ring|damm|ufer|steig|pfad|chaussee|"
    "straat|laan|gracht|plein|kade|singel|dreef|vej|gade|stræde|allé|vænget|gatan|vägen|väg|"
    "gränd|torget|gata|veien|vegen|gaten|vei|tie|katu|kuja|polku|tori|utca|köz|sétány|körút|"
    "út|tér|ulice|náměstí|třída|ulica|cesta|trg|gatve|iela|tänav|maantee|puiestee|braut|"
    "vegur|gata|stígur|tún|ntie|odos|strada|straza"
)
# Street words before the name. Foreign ones are unambiguous; English-like ones need a
# house number after the name ("Avenue Foch 12", not "Place of my birth").
_PREFIX_STRONG = (
    r"via|viale|vicolo|piazza|piazzale|corso|largo|rua|r\.|travessa|tv\.|avenida|avda\.?|"
    r"alameda|calle|c/|carrer|camino|paseo|pasaje|rambla|carretera|rue|chemin|allée|impasse|"
    r"quai|cours|ul\.|ulica|ulice|al\.|aleja|aleje|os\.|osiedle|plac|bulevardul|calea|"
    r"șoseaua|soseaua|strada|str\.|odos|οδός|leoforos|λεωφόρος|bairro|rúa|avinguda|praça|"
    r"praca|estrada|vía|v\.|u\.|utca|stradă|bd\.|bld\."
)
_PREFIX_WEAK = r"avenue|boulevard|place|route|plaza|av\.|pl\.|square|st\.|saint"

STREET_PATTERNS = [
    # 3240 Meadow Drive / 29 Wattle St / 14386 137 Avenue Teboulbi
    rf"\b(?:{NUM}[ \t]+){{1,2}}(?:[NSEW]\.?[ \t]+)?(?:(?:{NAME}|{PARTICLE}|\d{{1,4}})[ \t]+){{0,4}}"
    rf"(?i:{_TYPES_FULL}|(?:{_TYPES_ABBR})\b\.?)(?![\w])",
    # Meadow Drive (no number: only full street words)
    rf"\b(?:{NAME}[ \t]+){{1,3}}(?i:street|avenue|road|boulevard|lane|drive|terrace|parkway|"
    rf"highway|crescent|alley|plaza|square)\b",
    # Via Pasquale Scura 127 / 49368 R Poeta João Ruiz 1 / ul. Asnyka Adama 82
    rf"(?:\b(?:{NUM}[ \t]+){{0,2}})(?<![\w.])(?i:{_PREFIX_STRONG})(?!\w)[ \t]*"
    rf"(?:(?:{NAME}|{PARTICLE}|\d{{1,4}}\.?)[ \t]+){{0,5}}(?:{NAME}|{NUM})(?:[ \t]+{NUM}\b)?",
    # Avenue Foch 12
    rf"(?:\b(?:{NUM}[ \t]+){{0,2}})\b(?i:{_PREFIX_WEAK})[ \t]+"
    rf"(?:(?:{NAME}|{PARTICLE})[ \t]+){{1,4}}{NUM}\b",
    # 84106 Kronwiesenweg 95 / Ulriksholmvej 46 / Grazer Strasse 10
    # (the street word is bounded: unbounded, "1-2-3-..." backtracked for seconds)
    rf"(?:\b(?:{NUM}[ \t]+){{0,2}})\b(?:{NAME}[ \t]+){{0,2}}"
    rf"\b(?:[^\W\d_]|['\u2019-]){{0,40}}(?i:{_SUFFIXES})\.?"
    rf"(?:[ \t]+{NAME}){{0,2}}[ \t]+{NUM}\b",
    # 77780 Luite tee 87 / 637 Strojírenská 1006 (not "Top 10 Movies of 2020")
    rf"\b{NUM}[ \t]+{NAME}(?:[ \t]+[^\W\d_][\w'\u2019.-]*){{0,3}}[ \t]+(?!(?:19|20)\d\d\b){NUM}\b",
    # Dobrovského 1394 street
    rf"\b(?:{NAME}[ \t]+){{1,3}}{NUM}[ \t]+(?i:street|st\.|road|avenue)",
    # P.O. Box 63 / PO Box 1234
    r"(?i:\bp\.?\s?o\.?\s?box|\bpost\s+office\s+box)[ \t]*#?[ \t]*\d{1,6}\b",
    # Unit 9363 Box 8546 / PSC 1234, Box 5678 / USNS Guibord / DPO AA 70447
    r"\b(?:Unit|PSC|CMR)[ \t]+\d{3,5},?[ \t]+Box[ \t]+\d{2,5}\b",
    rf"\b(?:USNS|USNV|USS|USCGC)[ \t]+{NAME}(?:[ \t]+{NAME})?",
    r"\b(?:APO|FPO|DPO)[ \t]+(?:AA|AE|AP)(?:[ \t]+\d{5}(?:-\d{4})?)?\b",
]

SECONDARY = (
    r"(?i:apt|apartment|suite|ste|unit|flat|floor|fl|room|rm|box|bldg|building|lot|"
    r"office|dept|door|stair|piso|etage|app|whg|wohnung)\.?[ \t]*(?:#|no\.?|nr\.?)?[ \t]*"
    r"\d{1,5}[A-Za-z]?\b"
)
POSTCODE = (
    r"(?:\d{5}(?:-\d{4})?|\d{3}[ -]\d{2}|\d{2}-\d{3}|\d{4}(?:[ \t]?[A-Z]{2})?|\d{6}|"
    r"[A-Z]{1,2}\d[A-Z\d]?[ \t]?\d[A-Z]{2}|[A-Z]\d[A-Z][ \t]?\d[A-Z]\d)\b"
)
US_STATES = (
    "Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|"
    "Georgia|Hawaii|Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|"
    "Massachusetts|Michigan|Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|"
    "New Hampshire|New Jersey|New Mexico|New York|North Carolina|North Dakota|Ohio|Oklahoma|"
    "Oregon|Pennsylvania|Rhode Island|South Carolina|South Dakota|Tennessee|Texas|Utah|"
    "Vermont|Virginia|Washington|West Virginia|Wisconsin|Wyoming|District of Columbia|"
    "Puerto Rico|Guam"
)
STATE_ABBR = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|"
    "NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|DC|PR|GU|VI|AA|AE|AP"
)
_EXTRA_COUNTRIES = (
    "USA",
    "U.S.A.",
    "UK",
    "U.K.",
    "England",
    "Scotland",
    "Wales",
    "Northern Ireland",
    "Great Britain",
    "Britain",
    "Holland",
    "America",
    "Czechia",
    "Russia",
    "Vatican",
    "Ivory Coast",
    "Burma",
    "Swaziland",
    "Macedonia",
    "Cape Verde",
    "East Timor",
)


@functools.cache
def countries() -> tuple[str, ...]:
    names: set[str] = set(_EXTRA_COUNTRIES)
    for languages in phone_locale.LOCALE_DATA.values():
        name = languages.get("en")
        while isinstance(name, str) and name.startswith("*"):
            name = languages.get(name[1:])
        if name:
            names.add(name)
            names.add(re.sub(r"\s*\(.*\)$", "", name))
    return tuple(sorted(names, key=len, reverse=True))


@functools.cache
def _compiled() -> dict[str, re.Pattern[str]]:
    country = "|".join(re.escape(c) for c in countries())
    region = rf"(?:{country}|{US_STATES})"
    city = rf"(?:{NAME}(?:[ \t]+(?:{NAME}|{PARTICLE})){{0,3}})"
    part = rf"(?:{SECONDARY}|{region}\b|(?:{STATE_ABBR})\b|{POSTCODE}|{city}|nan\b)"
    return {
        "street": re.compile("|".join(f"(?:{p})" for p in STREET_PATTERNS)),
        "part": re.compile(rf"{SEP}({part})"),
        "region": re.compile(rf"(?<![\w-])(?:{region})(?![\w-])"),
        "city_region": re.compile(
            rf"(?<![\w-]){city}(?:,|[ \t]*\n)[ \t]*"
            rf"(?:{region}|(?:{STATE_ABBR})(?:[ \t]+\d{{5}})?)(?![\w-])"
        ),
        "postcode_cue": re.compile(
            rf"(?i:\b(?:zip|zip\s*code|post\s*code|postal\s*code|postcode|plz)(?:\s*(?:is|:|#))?)\s*"
            rf"((?-i:{POSTCODE}))"
        ),
        "place_cue": re.compile(
            rf"(?i:\b(?:live|lives|living|lived|moved|move|moving|relocated|relocating|based|"
            rf"born|located|reside|resides|residing|grew\s+up|originally|stay|staying|"
            rf"staying|visit|visiting|travel(?:l)?ing|flew|fly|flying|trip|come|comes|came|"
            rf"hometown|town|city|village|county|region|province|i'm|i\s+am|we're|we\s+are|"
            rf"filmed|shot|set|takes\s+place|took\s+place|happens|happened)\b"
            rf"(?:[ \t]+\w+){{0,2}}?[ \t]+"
            rf"(?:in|to|from|at|near|of|is)[ \t]+)({city})"
        ),
        "secondary": re.compile(rf"\b{SECONDARY}"),
    }


class AddressRecognizer(LocalRecognizer):
    """LOCATION: street addresses as one span each, countries, states, cued places."""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(
            supported_entities=["LOCATION"],
            supported_language=supported_language,
            name="AddressRecognizer",
        )

    def load(self) -> None:
        self.patterns = _compiled()

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        if "LOCATION" not in entities:
            return []
        p = self.patterns
        text = unescape_newlines(text)
        spans: list[tuple[int, int, float]] = []
        for match in p["street"].finditer(text):
            spans.append((match.start(), self._block_end(text, match.end()), ADDRESS_SCORE))
        for match in p["region"].finditer(text):
            spans.append((match.start(), match.end(), PLACE_SCORE))
        for match in p["city_region"].finditer(text):
            spans.append((match.start(), match.end(), PLACE_SCORE))
        for match in p["postcode_cue"].finditer(text):
            spans.append((match.start(1), match.end(1), PLACE_SCORE))
        for match in p["place_cue"].finditer(text):
            spans.append((match.start(1), match.end(1), CUE_SCORE))
        for match in p["secondary"].finditer(text):
            spans.append((match.start(), match.end(), WEAK_SCORE))
        return [
            finding(self, "LOCATION", start, end, score)
            for start, end, score in spans
            if end > start
        ]

    def _block_end(self, text: str, end: int) -> int:
        """Extend a street line over the address parts that follow it (at most six)."""
        for _ in range(6):
            part = self.patterns["part"].match(text, end)
            if part is None or part.group(1).strip() in ("I", "A"):
                break
            end = part.end(1)
        return end
