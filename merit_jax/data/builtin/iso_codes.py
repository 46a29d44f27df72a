"""Tasks over ISO 3166 (countries and subdivisions), ISO 4217, ISO 639-3 and ISO 15924 via `pycountry`.

Most tasks ask about several codes at once, so a held-out question combines codes that
training questions have already shown one by one.
"""

import functools

import pycountry

from merit_jax.data.builtin.spec import TaskSpec, record_rng, to_json

FAMILY = "iso_codes"


@functools.cache
def _countries() -> tuple:
    return tuple(sorted(pycountry.countries, key=lambda country: country.alpha_2))


@functools.cache
def _currencies() -> tuple:
    return tuple(sorted(pycountry.currencies, key=lambda currency: currency.alpha_3))


@functools.cache
def _subdivisions() -> tuple:
    return tuple(sorted(pycountry.subdivisions, key=lambda subdivision: subdivision.code))


@functools.cache
def _languages() -> tuple:
    return tuple(sorted(pycountry.languages, key=lambda language: language.alpha_3))


@functools.cache
def _scripts() -> tuple:
    # Names with commas ("Ahom, Tai Ahom") would be ambiguous inside a "; "-separated prompt list.
    return tuple(sorted((s for s in pycountry.scripts if "," not in s.name), key=lambda s: s.alpha_4))


def _sample(name: str, index: int, pool: tuple, low: int, high: int) -> list:
    rng = record_rng(name, index)
    picks = rng.choice(len(pool), size=int(rng.integers(low, high + 1)), replace=False)
    return [pool[pick] for pick in picks]


def _alpha3_list_record(index: int):
    countries = _sample("country_alpha3_list", index, _countries(), 2, 4)
    fields = {"codes": ", ".join(country.alpha_2 for country in countries)}
    return fields, ", ".join(country.alpha_3 for country in countries)


def _numeric_json_record(index: int):
    countries = _sample("country_numeric_json", index, _countries(), 2, 3)
    fields = {"codes": ", ".join(country.alpha_3 for country in countries)}
    return fields, to_json({country.alpha_3: country.numeric for country in countries})


def _subdivision_record(index: int):
    subdivision = _subdivisions()[index]
    country = pycountry.countries.get(alpha_2=subdivision.country_code)
    return {"code": subdivision.code}, country.name


def _currency_json_record(index: int):
    currencies = _sample("currency_numeric_json", index, _currencies(), 2, 3)
    fields = {"codes": ", ".join(currency.alpha_3 for currency in currencies)}
    return fields, to_json({currency.alpha_3: currency.numeric for currency in currencies})


def _script_codes_record(index: int):
    scripts = _sample("script_codes_list", index, _scripts(), 2, 3)
    fields = {"names": "; ".join(script.name for script in scripts)}
    return fields, ", ".join(script.alpha_4 for script in scripts)


def _language_record(index: int):
    language = _languages()[index]
    return {"code": language.alpha_3}, language.name


TASKS = (
    TaskSpec(
        name="country_alpha3_list",
        family=FAMILY,
        source="pycountry.countries (ISO 3166-1), 2-4 countries per question",
        answer_format="comma-separated alpha-3 codes",
        templates=(
            "Convert these ISO 3166-1 alpha-2 codes to alpha-3: {codes}",
            "Give the three-letter country codes for {codes}.",
            "Alpha-3 codes of the countries {codes}, in the same order:",
        ),
        capacity=lambda: 10**9,
        record=_alpha3_list_record,
    ),
    TaskSpec(
        name="country_numeric_json",
        family=FAMILY,
        source="pycountry.countries (ISO 3166-1 numeric), 2-3 countries per question",
        answer_format='JSON object {"alpha-3": "numeric code"}',
        templates=(
            "Map each country code to its ISO 3166-1 numeric code as JSON: {codes}",
            "Give the numeric codes of {codes} as a JSON object.",
            "Return a JSON object from alpha-3 code to numeric code for {codes}.",
        ),
        capacity=lambda: 10**9,
        record=_numeric_json_record,
        system_prompts=("Reply with a JSON object only.",),
    ),
    TaskSpec(
        name="subdivision_country",
        family=FAMILY,
        source="pycountry.subdivisions (ISO 3166-2) and pycountry.countries",
        answer_format="English country name (ISO 3166-1 name)",
        templates=(
            "Which country contains the subdivision {code}?",
            "The ISO 3166-2 code {code} belongs to which country?",
            "Country of subdivision {code}:",
        ),
        capacity=lambda: len(_subdivisions()),
        record=_subdivision_record,
    ),
    TaskSpec(
        name="currency_numeric_json",
        family=FAMILY,
        source="pycountry.currencies (ISO 4217), 2-3 currencies per question",
        answer_format='JSON object {"currency code": "numeric code"}',
        templates=(
            "Give the ISO 4217 numeric codes of {codes} as JSON.",
            "Map these currency codes to their numeric codes in a JSON object: {codes}",
            "Numeric currency codes for {codes}, as JSON:",
        ),
        capacity=lambda: 10**9,
        record=_currency_json_record,
        system_prompts=("Reply with a JSON object only.",),
    ),
    TaskSpec(
        name="script_codes_list",
        family=FAMILY,
        source="pycountry.scripts (ISO 15924), 2-3 scripts per question",
        answer_format="comma-separated four-letter script codes",
        templates=(
            "Give the ISO 15924 codes of these scripts: {names}",
            "What are the four-letter script codes for {names}?",
            "ISO 15924 codes, in order, for: {names}",
        ),
        capacity=lambda: 10**9,
        record=_script_codes_record,
    ),
    TaskSpec(
        name="language_name",
        family=FAMILY,
        source="pycountry.languages (ISO 639-3)",
        answer_format="English language name",
        templates=(
            "Which language has the ISO 639-3 code {code}?",
            "Name the language with code {code}.",
            "ISO 639-3 {code} is the code of which language?",
        ),
        capacity=lambda: len(_languages()),
        record=_language_record,
    ),
)
