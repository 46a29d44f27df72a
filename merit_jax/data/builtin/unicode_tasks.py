"""Tasks over the Unicode Character Database shipped with Python's `unicodedata`.

The records depend on the Python version: Python 3.11 ships Unicode 14.0.0, and a newer
database can rename or recategorize characters, which changes the generated examples.
"""

import functools
import unicodedata

from merit_jax.data.builtin.spec import TaskSpec, log_uniform_int, record_rng, to_json

FAMILY = "unicode"

_DIGIT_WORDS = ("ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE")

# Decimal digit sets that sit in the Basic Multilingual Plane, named as in the character names.
DIGIT_SCRIPTS = (
    "ARABIC-INDIC",
    "EXTENDED ARABIC-INDIC",
    "DEVANAGARI",
    "BENGALI",
    "GURMUKHI",
    "GUJARATI",
    "ORIYA",
    "TAMIL",
    "TELUGU",
    "KANNADA",
    "MALAYALAM",
    "THAI",
    "LAO",
    "TIBETAN",
    "MYANMAR",
    "KHMER",
    "MONGOLIAN",
    "FULLWIDTH",
)

# Character-name prefix -> the script name used in prompts.
LETTER_SCRIPTS = {
    "LATIN": "Latin",
    "GREEK": "Greek",
    "CYRILLIC": "Cyrillic",
    "ARMENIAN": "Armenian",
    "HEBREW": "Hebrew",
    "ARABIC": "Arabic",
    "DEVANAGARI": "Devanagari",
    "THAI": "Thai",
    "GEORGIAN": "Georgian",
    "HIRAGANA": "Hiragana",
    "KATAKANA": "Katakana",
    "HANGUL": "Hangul",
    "CJK": "Han",
}

# Code point ranges (first, last) searched for letters with one-to-one case mappings.
_CASED_BLOCKS = {
    "Latin": (0x0041, 0x024F),
    "Greek": (0x0370, 0x03FF),
    "Cyrillic": (0x0400, 0x04FF),
    "Armenian": (0x0530, 0x058F),
}


@functools.cache
def script_digits(script: str) -> str:
    """Return the ten digits 0-9 of `script` (a name from `DIGIT_SCRIPTS`) as one string."""
    return "".join(unicodedata.lookup(f"{script} DIGIT {word}") for word in _DIGIT_WORDS)


def to_script_digits(text: str, script: str) -> str:
    """Replace the ASCII digits of `text` with those of `script`."""
    return text.translate(str.maketrans("0123456789", script_digits(script)))


@functools.cache
def letters_by_script() -> dict[str, tuple[str, ...]]:
    """Map each script of `LETTER_SCRIPTS` to its BMP letters (categories L*), in code point order."""
    letters = {script: [] for script in LETTER_SCRIPTS.values()}
    for code in range(0x10000):
        char = chr(code)
        if not unicodedata.category(char).startswith("L"):
            continue
        prefix = unicodedata.name(char, "").split(" ")[0]
        if prefix in LETTER_SCRIPTS:
            letters[LETTER_SCRIPTS[prefix]].append(char)
    return {script: tuple(chars) for script, chars in letters.items()}


@functools.cache
def case_pairs(script: str) -> tuple[tuple[str, str], ...]:
    """Return (uppercase, lowercase) letter pairs of `script` whose mappings are one-to-one."""
    first, last = _CASED_BLOCKS[script]
    pairs = []
    for code in range(first, last + 1):
        upper = chr(code)
        lower = upper.lower()
        if unicodedata.category(upper) != "Lu" or len(lower) != 1:
            continue
        if unicodedata.category(lower) == "Ll" and lower.upper() == upper:
            pairs.append((upper, lower))
    return tuple(pairs)


@functools.cache
def _category_pool() -> tuple[str, ...]:
    # Without the caps on Han and Hangul, "Lo" would be the answer to most questions.
    ranges = [(0x0021, 0x2FFF), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xADFF), (0xFF01, 0xFF5E)]
    pool = []
    for first, last in ranges:
        for code in range(first, last + 1):
            if unicodedata.category(chr(code))[0] in "LNPS":
                pool.append(chr(code))
    return tuple(pool)


@functools.cache
def _named_letters() -> tuple[str, ...]:
    # Presentation forms above U+1FFF (Arabic ligatures, "FINAL FORM") and names longer than
    # six words would make the name answers long lookups rather than compositions of parts.
    keep = ("Latin", "Greek", "Cyrillic", "Armenian", "Hebrew", "Arabic", "Georgian", "Devanagari")
    letters = (char for script in keep for char in letters_by_script()[script])
    return tuple(char for char in letters if ord(char) < 0x2000 and len(unicodedata.name(char).split()) <= 6)


@functools.cache
def _decomposable_letters() -> tuple[str, ...]:
    # Hangul syllables decompose into jamo, not into a base letter and marks, so they stay out.
    pool = []
    for code in range(0x10000):
        char = chr(code)
        if not unicodedata.category(char).startswith("L") or 0xAC00 <= code <= 0xD7A3:
            continue
        decomposed = unicodedata.normalize("NFD", char)
        if len(decomposed) > 1 and all(unicodedata.combining(mark) for mark in decomposed[1:]):
            pool.append(char)
    return tuple(pool)


@functools.cache
def _case_question_pool() -> tuple[str, ...]:
    cased = [char for script in _CASED_BLOCKS for pair in case_pairs(script) for char in pair]
    uncased = [char for script in ("Hebrew", "Arabic", "Hiragana") for char in letters_by_script()[script]]
    return tuple(cased + uncased)


def _category_record(index: int):
    char = _category_pool()[index]
    return {"char": char, "code": f"U+{ord(char):04X}"}, unicodedata.category(char)


def _name_record(index: int):
    char = _named_letters()[index]
    return {"char": char}, unicodedata.name(char)


def _random_cased_word(name: str, index: int, column: int):
    rng = record_rng(name, index)
    script = sorted(_CASED_BLOCKS)[rng.integers(len(_CASED_BLOCKS))]
    pairs = case_pairs(script)
    picks = rng.integers(len(pairs), size=int(rng.integers(3, 9)))
    return "".join(pairs[pick][column] for pick in picks)


def _uppercase_record(index: int):
    word = _random_cased_word("uppercase_word", index, column=1)
    return {"word": word}, word.upper()


def _lowercase_record(index: int):
    # str.lower applies the final-sigma rule, so a Greek word ending in Σ ends in ς.
    word = _random_cased_word("lowercase_word", index, column=0)
    return {"word": word}, word.lower()


def _decomposition_record(index: int):
    char = _decomposable_letters()[index]
    base, *marks = unicodedata.normalize("NFD", char)
    answer = to_json({"base": base, "marks": [unicodedata.name(mark) for mark in marks]})
    return {"char": char}, answer


def _digits_to_ascii_record(index: int):
    rng = record_rng("digits_to_ascii", index)
    script = DIGIT_SCRIPTS[rng.integers(len(DIGIT_SCRIPTS))]
    number = str(log_uniform_int(rng, 0, 10_000_000))
    return {"digits": to_script_digits(number, script)}, number


def _ascii_to_digits_record(index: int):
    rng = record_rng("ascii_to_digits", index)
    script = DIGIT_SCRIPTS[rng.integers(len(DIGIT_SCRIPTS))]
    number = str(log_uniform_int(rng, 0, 10_000_000))
    return {"number": number, "script": script.title()}, to_script_digits(number, script)


def _is_uppercase_record(index: int):
    char = _case_question_pool()[index]
    return {"char": char}, "yes" if unicodedata.category(char) == "Lu" else "no"


def _script_choice_record(index: int):
    rng = record_rng("script_choice", index)
    letters = letters_by_script()
    scripts = sorted(letters)
    options = [scripts[i] for i in rng.choice(len(scripts), size=4, replace=False)]
    chars = [letters[script][rng.integers(len(letters[script]))] for script in options]
    correct = int(rng.integers(4))
    fields = {"script": options[correct], "a": chars[0], "b": chars[1], "c": chars[2], "d": chars[3]}
    return fields, "ABCD"[correct]


def _names_list_record(index: int):
    rng = record_rng("unicode_names_list", index)
    pool = _named_letters()
    text = "".join(pool[i] for i in rng.integers(len(pool), size=int(rng.integers(2, 5))))
    return {"text": text}, ", ".join(unicodedata.name(char) for char in text)


TASKS = (
    TaskSpec(
        name="unicode_category",
        family=FAMILY,
        source="unicodedata.category over letters, numbers, punctuation and symbols of the BMP",
        answer_format="two-letter general category code (Lu, Nd, Po, ...)",
        templates=(
            "What is the Unicode general category of the character '{char}'? Answer with the two-letter code.",
            "Give the general category code of {code} ('{char}').",
            "Unicode category of '{char}':",
        ),
        capacity=lambda: len(_category_pool()),
        record=_category_record,
    ),
    TaskSpec(
        name="unicode_name",
        family=FAMILY,
        source="unicodedata.name of Latin, Greek, Cyrillic, Armenian, Hebrew, Arabic, Georgian, Devanagari letters below U+2000",
        answer_format="Unicode character name in capitals",
        templates=(
            "What is the Unicode name of '{char}'?",
            "Give the official Unicode character name of {char}.",
            "Name this character as the Unicode standard does: {char}",
        ),
        capacity=lambda: len(_named_letters()),
        record=_name_record,
    ),
    TaskSpec(
        name="uppercase_word",
        family=FAMILY,
        source="str.upper of random Latin, Greek, Cyrillic or Armenian letter strings",
        answer_format="the word in capitals, same script",
        templates=(
            "Convert to uppercase: {word}",
            "Write '{word}' in capital letters.",
            "What is the uppercase form of {word}?",
        ),
        capacity=lambda: 10**9,
        record=_uppercase_record,
    ),
    TaskSpec(
        name="lowercase_word",
        family=FAMILY,
        source="str.lower of random Latin, Greek, Cyrillic or Armenian letter strings",
        answer_format="the word in small letters, same script",
        templates=(
            "Convert to lowercase: {word}",
            "Write '{word}' in small letters.",
            "What is the lowercase form of {word}?",
        ),
        capacity=lambda: 10**9,
        record=_lowercase_record,
    ),
    TaskSpec(
        name="unicode_decomposition",
        family=FAMILY,
        source="unicodedata.normalize('NFD') of precomposed BMP letters, marks named by unicodedata.name",
        answer_format='JSON object {"base": letter, "marks": [combining mark names]}',
        templates=(
            "Decompose '{char}' into its base letter and combining marks.",
            "What is the canonical decomposition of {char}? Give the base letter and the names of the marks.",
            "Split the letter {char} into base and diacritics.",
        ),
        capacity=lambda: len(_decomposable_letters()),
        record=_decomposition_record,
        system_prompts=("Reply with a JSON object only.", "Answer in JSON."),
    ),
    TaskSpec(
        name="digits_to_ascii",
        family=FAMILY,
        source="unicodedata digit characters of 18 scripts, numbers below 10,000,000",
        answer_format="integer in ASCII digits",
        templates=(
            "Write the number {digits} with ASCII digits.",
            "Convert {digits} to Western Arabic numerals.",
            "What number is written as {digits}?",
        ),
        capacity=lambda: 10**9,
        record=_digits_to_ascii_record,
    ),
    TaskSpec(
        name="ascii_to_digits",
        family=FAMILY,
        source="unicodedata digit characters of 18 scripts, numbers below 10,000,000",
        answer_format="integer in the digits of the requested script (Devanagari, Thai, ...)",
        templates=(
            "Write {number} using {script} digits.",
            "Convert {number} to {script} numerals.",
            "How is {number} written with {script} digits?",
        ),
        capacity=lambda: 10**9,
        record=_ascii_to_digits_record,
    ),
    TaskSpec(
        name="is_uppercase",
        family=FAMILY,
        source="unicodedata.category == 'Lu' for cased letters and for uncased Hebrew, Arabic, Hiragana letters",
        answer_format="yes / no",
        templates=(
            "Is '{char}' an uppercase letter? Answer yes or no.",
            "Is {char} a capital letter? Reply with yes or no.",
            "Uppercase letter or not (yes/no): {char}",
        ),
        capacity=lambda: len(_case_question_pool()),
        record=_is_uppercase_record,
    ),
    TaskSpec(
        name="script_choice",
        family=FAMILY,
        source="letters of 13 scripts, grouped by the first word of their unicodedata.name",
        answer_format="option letter A-D",
        templates=(
            "Which option is a {script} character?\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer with the option letter.",
            "Pick the {script} letter.\nA. {a}\nB. {b}\nC. {c}\nD. {d}",
            "Options: A. {a}  B. {b}  C. {c}  D. {d}\nWhich one belongs to the {script} script?",
        ),
        capacity=lambda: 10**9,
        record=_script_choice_record,
    ),
    TaskSpec(
        name="unicode_names_list",
        family=FAMILY,
        source="unicodedata.name of 2-4 letters drawn from eight scripts",
        answer_format="comma-separated Unicode names, one per character",
        templates=(
            "List the Unicode names of the characters in '{text}', in order, separated by commas.",
            "Name each character of {text} with its Unicode name.",
            "Give the Unicode character names for: {text}",
        ),
        capacity=lambda: 10**9,
        record=_names_list_record,
    ),
)
