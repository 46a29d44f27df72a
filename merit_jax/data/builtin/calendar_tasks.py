"""Tasks over the proleptic Gregorian calendar of Python's `datetime` and `calendar` modules.

Month and weekday names are spelled out here rather than taken from `calendar.month_name`,
which follows the process locale and would change the examples from machine to machine.
"""

import calendar
import datetime

from merit_jax.data.builtin.spec import TaskSpec, mixed_radix

FAMILY = "calendar"

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_FIRST_DAY = datetime.date(1900, 1, 1)
_DAY_COUNT = (datetime.date(2099, 12, 31) - _FIRST_DAY).days + 1
# Years since the Gregorian reform, so that leap-year rules match the historical calendar.
_FIRST_GREGORIAN_YEAR = 1583


def _date(index: int) -> datetime.date:
    return _FIRST_DAY + datetime.timedelta(days=index)


def _weekday_record(index: int):
    date = _date(index)
    return {"date": date.isoformat()}, WEEKDAYS[date.weekday()]


def _days_in_month_record(index: int):
    year_offset, month = mixed_radix(index, (2400 - _FIRST_GREGORIAN_YEAR, 12))
    year = _FIRST_GREGORIAN_YEAR + year_offset
    fields = {"month": MONTHS[month], "year": year}
    return fields, str(calendar.monthrange(year, month + 1)[1])


def _leap_year_record(index: int):
    year = _FIRST_GREGORIAN_YEAR + index
    return {"year": year}, "yes" if calendar.isleap(year) else "no"


def _day_of_year_record(index: int):
    date = _date(index)
    return {"date": date.isoformat()}, str(date.timetuple().tm_yday)


def _us_numeric_record(index: int):
    date = _date(index)
    return {"date": date.isoformat()}, f"{date.month:02d}/{date.day:02d}/{date.year:04d}"


def _add_days_record(index: int):
    day, offset = mixed_radix(index, (_DAY_COUNT, 100))
    date = _date(day)
    days = offset + 1
    return {"date": date.isoformat(), "days": days}, (date + datetime.timedelta(days=days)).isoformat()


def _weekdays_in_month_record(index: int):
    year_offset, month, weekday = mixed_radix(index, (200, 12, 7))
    year = 1900 + year_offset
    first_weekday, length = calendar.monthrange(year, month + 1)
    first = 1 + (weekday - first_weekday) % 7
    dates = [datetime.date(year, month + 1, day).isoformat() for day in range(first, length + 1, 7)]
    fields = {"weekday": WEEKDAYS[weekday], "month": MONTHS[month], "year": year}
    return fields, ", ".join(dates)


TASKS = (
    TaskSpec(
        name="weekday_name",
        family=FAMILY,
        source="datetime.date.weekday, dates 1900-2099",
        answer_format="English weekday name",
        templates=(
            "On which day of the week does {date} fall?",
            "What weekday is {date}?",
            "Name the day of the week for the date {date}.",
        ),
        capacity=lambda: _DAY_COUNT,
        record=_weekday_record,
    ),
    TaskSpec(
        name="days_in_month",
        family=FAMILY,
        source="calendar.monthrange, years 1583-2399",
        answer_format="integer 28-31",
        templates=(
            "How many days does {month} {year} have?",
            "Number of days in {month} of the year {year}:",
            "Count the days in {month} {year}.",
        ),
        capacity=lambda: (2400 - _FIRST_GREGORIAN_YEAR) * 12,
        record=_days_in_month_record,
    ),
    TaskSpec(
        name="is_leap_year",
        family=FAMILY,
        source="calendar.isleap, Gregorian years 1583-9999",
        answer_format="yes / no",
        templates=(
            "Is {year} a leap year? Answer yes or no.",
            "Does the year {year} have a February 29? Reply yes or no.",
            "Leap year (yes/no): {year}",
        ),
        capacity=lambda: 10_000 - _FIRST_GREGORIAN_YEAR,
        record=_leap_year_record,
    ),
    TaskSpec(
        name="day_of_year",
        family=FAMILY,
        source="datetime.date.timetuple().tm_yday, dates 1900-2099",
        answer_format="integer 1-366",
        templates=(
            "What is the day of the year of {date}?",
            "Which ordinal day of its year is {date}?",
            "Day number within the year for {date}:",
        ),
        capacity=lambda: _DAY_COUNT,
        record=_day_of_year_record,
    ),
    TaskSpec(
        name="date_us_numeric",
        family=FAMILY,
        source="datetime.date, dates 1900-2099",
        answer_format="MM/DD/YYYY",
        templates=(
            "Rewrite {date} in the US format MM/DD/YYYY.",
            "Convert the ISO date {date} to month/day/year.",
            "{date} in American numeric date notation:",
        ),
        capacity=lambda: _DAY_COUNT,
        record=_us_numeric_record,
    ),
    TaskSpec(
        name="add_days",
        family=FAMILY,
        source="datetime.date + timedelta, dates 1900-2099, 1-100 days",
        answer_format="ISO 8601 date YYYY-MM-DD",
        templates=(
            "What date is {days} days after {date}? Answer as YYYY-MM-DD.",
            "Add {days} days to {date}.",
            "{date} plus {days} days is which date?",
        ),
        capacity=lambda: _DAY_COUNT * 100,
        record=_add_days_record,
    ),
    TaskSpec(
        name="weekdays_in_month",
        family=FAMILY,
        source="calendar.monthrange, months of 1900-2099",
        answer_format="comma-separated ISO dates (4-5 dates)",
        templates=(
            "List every {weekday} in {month} {year} as ISO dates, separated by commas.",
            "Which dates in {month} {year} are {weekday}s? Give them as YYYY-MM-DD.",
            "All {weekday}s of {month} {year}:",
        ),
        capacity=lambda: 200 * 12 * 7,
        record=_weekdays_in_month_record,
    ),
)
