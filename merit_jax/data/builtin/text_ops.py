"""String tasks over real words (ISO 639-3 language names from `pycountry`) and stdlib web tables.

The web tables are `html.entities.html5` and `http.HTTPStatus`.
"""

import functools
import html
import html.entities
import http
import re

import pycountry

from merit_jax.data.builtin.spec import TaskSpec, record_rng, to_json

FAMILY = "text"


@functools.cache
def _words() -> tuple[str, ...]:
    """Return one-word ASCII language names of 3-12 letters, such as 'Afar' or 'Tahitian'."""
    names = {language.name for language in pycountry.languages}
    return tuple(sorted(name for name in names if re.fullmatch("[A-Z][a-z]{2,11}", name)))


@functools.cache
def _entities() -> tuple[str, ...]:
    # The HTML5 table also lists legacy names without the final ';'; only the full forms stay.
    return tuple(sorted(name for name in html.entities.html5 if name.endswith(";")))


@functools.cache
def _statuses() -> tuple[http.HTTPStatus, ...]:
    return tuple(sorted(http.HTTPStatus))


def _pick_words(rng, low: int, high: int) -> list[str]:
    words = _words()
    return [words[i] for i in rng.choice(len(words), size=int(rng.integers(low, high + 1)), replace=False)]


def _sort_record(index: int):
    words = _pick_words(record_rng("sort_words", index), 3, 6)
    return {"words": ", ".join(words)}, ", ".join(sorted(words))


def _count_record(index: int):
    rng = record_rng("count_letter", index)
    word = _pick_words(rng, 1, 1)[0].lower()

    # Mostly ask about a letter of the word, sometimes about one that may be absent (answer 0).
    if rng.random() < 0.75:
        letter = word[rng.integers(len(word))]
    else:
        letter = "abcdefghijklmnopqrstuvwxyz"[rng.integers(26)]
    return {"word": word, "letter": letter}, str(word.count(letter))


def _reverse_record(index: int):
    word = _words()[index]
    return {"word": word}, word[::-1]


def _escape_record(index: int):
    rng = record_rng("html_escape", index)
    wrappers = ("{}", "<b>{}</b>", '"{}"', "'{}'", "<{}>", "{}&co")
    parts = [wrappers[rng.integers(len(wrappers))].format(word) for word in _pick_words(rng, 2, 4)]
    separators = (" ", " & ", " < ", " > ", ", ")
    text = parts[0]
    for part in parts[1:]:
        text += separators[rng.integers(len(separators))] + part
    return {"text": text}, html.escape(text, quote=True)


def _entity_record(index: int):
    name = _entities()[index]
    return {"entity": f"&{name}"}, html.entities.html5[name]


def _status_record(index: int):
    rng = record_rng("http_status_json", index)
    statuses = _statuses()
    picks = sorted(rng.choice(len(statuses), size=int(rng.integers(2, 4)), replace=False))
    chosen = [statuses[pick] for pick in picks]
    fields = {"codes": ", ".join(str(status.value) for status in chosen)}
    return fields, to_json({str(status.value): status.phrase for status in chosen})


TASKS = (
    TaskSpec(
        name="sort_words",
        family=FAMILY,
        source="one-word ISO 639-3 language names (pycountry), 3-6 per question",
        answer_format="comma-separated words in alphabetical order",
        templates=(
            "Sort these words alphabetically: {words}",
            "Put the following words in alphabetical order: {words}",
            "Alphabetize: {words}",
        ),
        capacity=lambda: 10**9,
        record=_sort_record,
    ),
    TaskSpec(
        name="count_letter",
        family=FAMILY,
        source="one-word ISO 639-3 language names (pycountry), lowercased",
        answer_format="integer (small count)",
        templates=(
            "How many times does the letter '{letter}' occur in '{word}'?",
            "Count the letter {letter} in the word {word}.",
            "Number of '{letter}' characters in {word}:",
        ),
        capacity=lambda: 10**9,
        record=_count_record,
    ),
    TaskSpec(
        name="reverse_word",
        family=FAMILY,
        source="one-word ISO 639-3 language names (pycountry)",
        answer_format="the word spelled backwards",
        templates=(
            "Reverse the letters of '{word}'.",
            "Write {word} backwards.",
            "Spell {word} from the last letter to the first.",
        ),
        capacity=lambda: len(_words()),
        record=_reverse_record,
    ),
    TaskSpec(
        name="html_escape",
        family=FAMILY,
        source="html.escape(quote=True) of language names joined by markup characters",
        answer_format="HTML-escaped text",
        templates=(
            "Escape this text for HTML: {text}",
            "Replace the HTML special characters in the following text with entities: {text}",
            "HTML-escape: {text}",
        ),
        capacity=lambda: 10**9,
        record=_escape_record,
    ),
    TaskSpec(
        name="html_entity",
        family=FAMILY,
        source="html.entities.html5 (named character references ending in ';')",
        answer_format="the character (one or two code points)",
        templates=(
            "Which character does the HTML entity {entity} stand for?",
            "Decode the HTML entity {entity}.",
            "{entity} renders as:",
        ),
        capacity=lambda: len(_entities()),
        record=_entity_record,
    ),
    TaskSpec(
        name="http_status_json",
        family=FAMILY,
        source="http.HTTPStatus, 2-3 status codes per question",
        answer_format='JSON object {"code": "reason phrase"}',
        templates=(
            "Give the reason phrases of the HTTP status codes {codes} as a JSON object.",
            "Map these HTTP status codes to their standard phrases in JSON: {codes}",
            "HTTP reason phrases for {codes} as JSON:",
        ),
        capacity=lambda: 10**9,
        record=_status_record,
        system_prompts=("Reply with a JSON object only.",),
    ),
)
