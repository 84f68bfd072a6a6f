"""HTTP-date parsing and formatting (RFC 9110 §5.6.7).

Decides which field values are valid timestamps. Recipients accept the three
historical forms; senders only generate IMF-fixdate. Parsing is strict about
the grammar (an invalid date is None, which callers treat per their own rule,
e.g. an invalid Expires means "already expired") except for letter case: day
names, month names and "GMT" match in any case, as §5.6.7 asks recipients to be
lenient and ``Thu, 01 JAN 2099 00:00:00 gmt`` means one instant only. The
day-name is not checked against the date, since it adds no information.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
import time

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAYS = "|".join(_DAY_NAMES)
_LONG_DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS = "|".join(_MONTH_NAMES)
_TIME = r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"

# IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
_IMF_FIXDATE = re.compile(
    rf"(?:{_DAYS}), (?P<day>\d\d) (?P<month>{_MONTHS}) (?P<year>\d{{4}}) {_TIME} GMT", re.ASCII | re.IGNORECASE
)
# obsolete rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT
_RFC850_DATE = re.compile(
    rf"(?:{_LONG_DAYS}), (?P<day>\d\d)-(?P<month>{_MONTHS})-(?P<year>\d\d) {_TIME} GMT", re.ASCII | re.IGNORECASE
)
# obsolete asctime-date: Sun Nov  6 08:49:37 1994
_ASCTIME_DATE = re.compile(
    rf"(?:{_DAYS}) (?P<month>{_MONTHS}) (?P<day>[ \d]\d) {_TIME} (?P<year>\d{{4}})", re.ASCII | re.IGNORECASE
)


def parse_http_date(text: str | None, *, now: float | None = None) -> float | None:
    """POSIX seconds for an HTTP-date in any of the three forms (§5.6.7), None when invalid.

    §5.6.7: a two-digit rfc850 year that appears to be more than 50 years in the
    future of ``now`` is the most recent past year with the same last two digits.
    Without ``now``, two-digit years 70-99 are 19xx and 00-69 are 20xx.
    """
    if text is None:
        return None
    text = text.strip(" \t")
    match = _IMF_FIXDATE.fullmatch(text) or _ASCTIME_DATE.fullmatch(text)
    if match is not None:
        year = int(match["year"])
    else:
        match = _RFC850_DATE.fullmatch(text)
        if match is None:
            return None
        year = _expand_two_digit_year(int(match["year"]), now)
    month = _MONTH_NAMES.index(match["month"].capitalize()) + 1
    day = int(match["day"].strip())
    hour, minute, second = int(match["hour"]), int(match["minute"]), int(match["second"])
    if hour > 23 or minute > 59 or second > 60:  # 60 allows a leap second
        return None
    try:
        datetime.date(year, month, day)
    except ValueError:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def _expand_two_digit_year(two_digits: int, now: float | None) -> int:
    """§5.6.7 rule for rfc850 years (see ``parse_http_date``)."""
    if now is None:
        return 1900 + two_digits if two_digits >= 70 else 2000 + two_digits
    current = time.gmtime(now).tm_year
    year = current - current % 100 + two_digits
    if year > current + 50:
        year -= 100
    return year


def format_http_date(timestamp: float) -> str:
    """IMF-fixdate for ``timestamp`` (whole seconds, floored), e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``.

    Names are written from tables, not the C locale; years outside 1-9999 raise ValueError.
    """
    moment = time.gmtime(math.floor(timestamp))
    if not 1 <= moment.tm_year <= 9999:
        raise ValueError(f"timestamp {timestamp!r} has no four-digit year")
    return (
        f"{_DAY_NAMES[moment.tm_wday]}, {moment.tm_mday:02d} {_MONTH_NAMES[moment.tm_mon - 1]} "
        f"{moment.tm_year:04d} {moment.tm_hour:02d}:{moment.tm_min:02d}:{moment.tm_sec:02d} GMT"
    )
