"""Tasks that format numbers, amounts and dates the way CLDR locales do, using `babel`.

Babel 2.19 writes Latin digits even where `Locale.default_numbering_system` names another
digit set ("arab" for ar_EG, "beng" for bn_BD). Answers for those locales therefore get
their digits transliterated to the locale's default numbering system.
"""

import datetime
import functools
import re
from decimal import Decimal

from babel import Locale, dates, numbers

from merit_jax.data.builtin.spec import TaskSpec, log_uniform_int, mixed_radix, record_rng, to_json
from merit_jax.data.builtin.unicode_tasks import to_script_digits

FAMILY = "locale_format"

# CLDR numbering system -> the digit set's name in the Unicode character names.
_NUMBERING_DIGITS = {"arab": "ARABIC-INDIC", "arabext": "EXTENDED ARABIC-INDIC", "beng": "BENGALI", "deva": "DEVANAGARI"}

_FIRST_DAY = datetime.date(1900, 1, 1)
_DAY_COUNT = (datetime.date(2099, 12, 31) - _FIRST_DAY).days + 1

_DECIMAL_LOCALES = ("en_US", "de_DE", "fr_FR", "ru_RU", "hi_IN", "es_ES", "ar_EG", "bn_BD")
_CURRENCY_LOCALES = ("en_US", "de_DE", "fr_FR", "ja_JP", "hi_IN", "ru_RU", "pt_BR", "en_GB")
_CURRENCIES = ("EUR", "USD", "JPY", "GBP", "INR", "RUB", "CHF", "BRL")
_PERCENT_LOCALES = ("en_US", "de_DE", "fr_FR", "tr_TR", "es_ES", "sv_SE", "hi_IN", "ar_EG")
_COMPACT_LOCALES = ("en_US", "de_DE", "ja_JP", "hi_IN", "ru_RU", "es_ES", "ko_KR", "zh_CN", "fr_FR")
_DATE_LOCALES = ("ru_RU", "el_GR", "ja_JP", "ko_KR", "zh_CN", "de_DE", "fr_FR", "hi_IN", "ar_EG", "es_ES")
# Language code -> the English language name used in prompts.
_NAME_LANGUAGES = {
    "de": "German",
    "fr": "French",
    "ru": "Russian",
    "ja": "Japanese",
    "el": "Greek",
    "ar": "Arabic",
    "hi": "Hindi",
    "es": "Spanish",
    "zh": "Chinese",
    "ko": "Korean",
}


def _native_digits(text: str, locale: str) -> str:
    system = Locale.parse(locale).default_numbering_system
    return to_script_digits(text, _NUMBERING_DIGITS[system]) if system in _NUMBERING_DIGITS else text


def _locale_fields(locale: str) -> dict[str, str]:
    return {"locale": locale, "locale_name": Locale.parse(locale).get_display_name("en")}


def _random_decimal(rng, high: int, max_fraction_digits: int) -> Decimal:
    integer = log_uniform_int(rng, 0, high)
    fraction_digits = int(rng.integers(0, max_fraction_digits + 1))
    fraction = int(rng.integers(0, 10**fraction_digits))
    text = f"{integer}.{fraction:0{fraction_digits}d}" if fraction_digits else str(integer)
    return Decimal(text)


def _decimal_record(index: int):
    rng = record_rng("decimal_format", index)
    locale = _DECIMAL_LOCALES[rng.integers(len(_DECIMAL_LOCALES))]
    number = _random_decimal(rng, 100_000_000, 3)
    answer = numbers.format_decimal(number, locale=locale, numbering_system="default")
    return {"number": str(number), **_locale_fields(locale)}, _native_digits(answer, locale)


def _currency_record(index: int):
    rng = record_rng("currency_format", index)
    locale = _CURRENCY_LOCALES[rng.integers(len(_CURRENCY_LOCALES))]
    currency = _CURRENCIES[rng.integers(len(_CURRENCIES))]
    amount = Decimal(log_uniform_int(rng, 1, 1_000_000_000)).scaleb(-2)
    answer = numbers.format_currency(amount, currency, locale=locale)
    return {"amount": str(amount), "currency": currency, **_locale_fields(locale)}, answer


def _percent_record(index: int):
    rng = record_rng("percent_format", index)
    locale = _PERCENT_LOCALES[rng.integers(len(_PERCENT_LOCALES))]
    value = _random_decimal(rng, 100, 4)
    answer = numbers.format_percent(value, locale=locale, decimal_quantization=False, numbering_system="default")
    return {"value": str(value), **_locale_fields(locale)}, _native_digits(answer, locale)


def _compact_record(index: int):
    rng = record_rng("compact_number", index)
    locale = _COMPACT_LOCALES[rng.integers(len(_COMPACT_LOCALES))]
    number = log_uniform_int(rng, 1_000, 1_000_000_000_000)
    answer = numbers.format_compact_decimal(number, format_type="short", locale=locale, fraction_digits=1)
    return {"number": number, **_locale_fields(locale)}, answer


def _date_and_locale(index: int) -> tuple[datetime.date, str]:
    locale_index, day = mixed_radix(index, (len(_DATE_LOCALES), _DAY_COUNT))
    return _FIRST_DAY + datetime.timedelta(days=day), _DATE_LOCALES[locale_index]


def _long_date(date: datetime.date, locale: str) -> str:
    return _native_digits(dates.format_date(date, format="long", locale=locale), locale)


def _date_long_record(index: int):
    date, locale = _date_and_locale(index)
    return {"date": date.isoformat(), **_locale_fields(locale)}, _long_date(date, locale)


def _date_parse_record(index: int):
    date, locale = _date_and_locale(index)
    return {"text": _long_date(date, locale), **_locale_fields(locale)}, date.isoformat()


def _multi_locale_record(index: int):
    rng = record_rng("date_multi_locale_json", index)
    date = _FIRST_DAY + datetime.timedelta(days=int(rng.integers(_DAY_COUNT)))
    picks = rng.choice(len(_DATE_LOCALES), size=int(rng.integers(3, 7)), replace=False)
    locales = [_DATE_LOCALES[pick] for pick in picks]
    fields = {"date": date.isoformat(), "locales": ", ".join(locales)}
    return fields, to_json({locale: _long_date(date, locale) for locale in locales})


@functools.cache
def _territory_codes() -> tuple[str, ...]:
    # Two-letter codes only: numeric UN M.49 region codes such as 419 are not territories.
    return tuple(sorted(code for code in Locale.parse("en").territories if re.fullmatch("[A-Z]{2}", code)))


def _territory_record(index: int):
    language_index, code_index = mixed_radix(index, (len(_NAME_LANGUAGES), len(_territory_codes())))
    language = sorted(_NAME_LANGUAGES)[language_index]
    code = _territory_codes()[code_index]
    fields = {"code": code, "language": _NAME_LANGUAGES[language]}
    return fields, Locale.parse(language).territories[code]


_LOCALE_SYSTEM = ("Format exactly as the locale's CLDR conventions require.",)

TASKS = (
    TaskSpec(
        name="decimal_format",
        family=FAMILY,
        source="babel.numbers.format_decimal, 8 locales, numbers below 10^8 with up to 3 decimals",
        answer_format="locale-formatted number (grouping, decimal sign, native digits)",
        templates=(
            "Format {number} as a decimal number for the locale {locale}.",
            "How is the number {number} written in {locale_name}?",
            "Write {number} using the number format of {locale}.",
        ),
        capacity=lambda: 10**9,
        record=_decimal_record,
        system_prompts=_LOCALE_SYSTEM,
    ),
    TaskSpec(
        name="currency_format",
        family=FAMILY,
        source="babel.numbers.format_currency, 8 locales x 8 currencies",
        answer_format="locale-formatted amount with currency symbol",
        templates=(
            "Format {amount} {currency} for the locale {locale}.",
            "How is an amount of {amount} {currency} written in {locale_name}?",
            "Write {amount} in {currency} as the locale {locale} displays it.",
        ),
        capacity=lambda: 10**9,
        record=_currency_record,
        system_prompts=_LOCALE_SYSTEM,
    ),
    TaskSpec(
        name="percent_format",
        family=FAMILY,
        source="babel.numbers.format_percent (decimal_quantization=False), 8 locales",
        answer_format="locale-formatted percentage",
        templates=(
            "Format the fraction {value} as a percentage for the locale {locale}.",
            "Express {value} as a percent in {locale_name} notation.",
            "Write {value} as a percentage using the conventions of {locale}.",
        ),
        capacity=lambda: 10**9,
        record=_percent_record,
    ),
    TaskSpec(
        name="compact_number",
        family=FAMILY,
        source="babel.numbers.format_compact_decimal (short, 1 fraction digit), 9 locales",
        answer_format="short compact number (1.2M, 123.5万, 12.3 लाख)",
        templates=(
            "Write {number} in short compact form for the locale {locale}.",
            "Abbreviate the number {number} the way {locale_name} does.",
            "Compact notation of {number} in {locale}:",
        ),
        capacity=lambda: 10**9,
        record=_compact_record,
    ),
    TaskSpec(
        name="date_long",
        family=FAMILY,
        source="babel.dates.format_date(format='long'), 10 locales, dates 1900-2099",
        answer_format="long date in the locale's language and script",
        templates=(
            "Write the date {date} in the long format of {locale}.",
            "How is {date} written out in {locale_name}?",
            "Format the ISO date {date} as a long date for the locale {locale}.",
        ),
        capacity=lambda: len(_DATE_LOCALES) * _DAY_COUNT,
        record=_date_long_record,
    ),
    TaskSpec(
        name="date_parse_iso",
        family=FAMILY,
        source="babel.dates.format_date(format='long') parsed back, 10 locales, dates 1900-2099",
        answer_format="ISO 8601 date YYYY-MM-DD",
        templates=(
            "Convert the {locale_name} date '{text}' to ISO 8601 (YYYY-MM-DD).",
            "Which ISO date is '{text}' (locale {locale})?",
            "Rewrite the {locale} date {text} as YYYY-MM-DD.",
        ),
        capacity=lambda: len(_DATE_LOCALES) * _DAY_COUNT,
        record=_date_parse_record,
    ),
    TaskSpec(
        name="date_multi_locale_json",
        family=FAMILY,
        source="babel.dates.format_date(format='long'), one date in 3-6 of 10 locales",
        answer_format='JSON object {"locale": "long date"}, keys in the requested order',
        templates=(
            "Write {date} as a long date in each of these locales, as a JSON object: {locales}",
            "Give the long form of the date {date} for the locales {locales} in JSON.",
            "Long date formats of {date} for {locales}, as JSON:",
        ),
        capacity=lambda: 10**9,
        record=_multi_locale_record,
        system_prompts=("Reply with a JSON object only.",),
    ),
    TaskSpec(
        name="territory_name",
        family=FAMILY,
        source="babel Locale.territories: 10 languages x CLDR two-letter territory codes",
        answer_format="territory name in the requested language",
        templates=(
            "What is the {language} name of the country or region with code {code}?",
            "Name the territory {code} in {language}.",
            "In {language}, the region with ISO code {code} is called:",
        ),
        capacity=lambda: len(_NAME_LANGUAGES) * len(_territory_codes()),
        record=_territory_record,
    ),
)
