"""Tasks that spell out integers as words in several languages and scripts, using `num2words`."""

from num2words import num2words

from merit_jax.data.builtin.spec import TaskSpec, log_uniform_int, record_rng

FAMILY = "number_words"

_CARDINAL_TEMPLATES = (
    "Write the number {number} in {language} words.",
    "How is {number} spelled out in {language}?",
    "Spell out {number} in {language}.",
    "{language} words for {number}:",
)


def _cardinal_spec(lang: str, language: str, script: str, high: int) -> TaskSpec:
    name = f"number_words_{lang}"

    # Digit counts are drawn uniformly, so short numbers are as common as long ones.
    def record(index: int):
        number = log_uniform_int(record_rng(name, index), 0, high)
        fields = {"number": number, "language": language}
        return fields, num2words(number, lang=lang)

    return TaskSpec(
        name=name,
        family=FAMILY,
        source=f"num2words(n, lang={lang!r}), 0 <= n < {high:,}",
        answer_format=f"{language} number words ({script} script)",
        templates=_CARDINAL_TEMPLATES,
        capacity=lambda: high,
        record=record,
    )


def _ordinal_record(index: int):
    number = log_uniform_int(record_rng("ordinal_words_en", index), 1, 100_000)
    return {"number": number}, num2words(number, lang="en", to="ordinal")


TASKS = (
    _cardinal_spec("en", "English", "Latin", 100_000),
    _cardinal_spec("fr", "French", "Latin", 100_000),
    _cardinal_spec("de", "German", "Latin", 100_000),
    _cardinal_spec("ru", "Russian", "Cyrillic", 100_000),
    _cardinal_spec("ar", "Arabic", "Arabic", 100_000),
    _cardinal_spec("ja", "Japanese", "CJK", 100_000_000),
    _cardinal_spec("bn", "Bengali", "Bengali", 1_000_000),
    TaskSpec(
        name="ordinal_words_en",
        family=FAMILY,
        source="num2words(n, lang='en', to='ordinal'), 1 <= n < 100,000",
        answer_format="English ordinal words",
        templates=(
            "Write the English ordinal word for {number}.",
            "Spell out the ordinal form of {number} in English.",
            "How do you write position number {number} as an English ordinal?",
        ),
        capacity=lambda: 99_999,
        record=_ordinal_record,
    ),
)
