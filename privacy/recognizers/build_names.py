"""Regenerate `data/names.tsv`, the name gazetteer of `privacy.recognizers.names`.

    pip install -e '.[eval]' && python -m privacy.recognizers.build_names

Sources (both MIT-licensed registry packages, no network): the first and last names
of every Faker person locale (86 locales: names people in Europe, the Americas, Asia
and Africa carry), and spaCy's English lexeme probabilities (spacy-lookups-data),
which mark a name that is more often an ordinary English word ("Will", "May",
"Long", "Grace"): those count as names only where a context or a second name says so.

Each line: `name<TAB>kinds<TAB>common`, the name casefolded, kinds a subset of "FL"
(first, last), common "1" when the lower-case word is more probable than the
capitalised one. Only single alphabetic words (hyphen and apostrophe allowed).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from pathlib import Path

import spacy_lookups_data  # type: ignore[import-untyped]
import srsly  # type: ignore[import-untyped]

WORD = re.compile(r"[^\W\d_](?:[^\W\d_]|['\u2019-](?=[^\W\d_]))+")
OUT = Path(__file__).with_name("data") / "names.tsv"


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        value = list(value)
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def faker_names() -> tuple[set[str], set[str]]:
    import faker.providers.person as person  # eval extra only

    firsts: set[str] = set()
    lasts: set[str] = set()
    for module in pkgutil.iter_modules(person.__path__):
        provider = importlib.import_module(f"{person.__name__}.{module.name}").Provider
        for attr in ("first_names", "first_names_male", "first_names_female"):
            firsts.update(_strings(provider.__dict__.get(attr)))
        for attr in ("last_names", "last_names_male", "last_names_female"):
            lasts.update(_strings(provider.__dict__.get(attr)))
    return firsts, lasts


def main() -> None:
    firsts, lasts = faker_names()
    data = Path(os.path.dirname(spacy_lookups_data.__file__)) / "data"
    prob: dict[str, float] = srsly.read_gzip_json(data / "en_lexeme_prob.json.gz")
    kinds: dict[str, set[str]] = {}
    for names, kind in ((firsts, "F"), (lasts, "L")):
        for name in names:
            if len(name) > 1 and WORD.fullmatch(name):
                kinds.setdefault(name.casefold(), set()).add(kind)
    lines = []
    for name in sorted(kinds):
        lower = prob.get(name, -30.0)
        capital = prob.get(name[:1].upper() + name[1:], -30.0)
        common = "1" if lower > capital else "0"
        lines.append(f"{name}\t{''.join(sorted(kinds[name]))}\t{common}")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} names -> {OUT}")


if __name__ == "__main__":
    main()
