"""Wikitext-shaped English text from a small probabilistic grammar: every word comes from the lists below.

Articles follow the layout of Wikitext-2-raw (` = Title = `, ` = = Section = = `, paragraph lines that start
with a space, an empty line before and after every heading) and its tokenization quirks (punctuation set off by
spaces, `@,@` and `@.@` inside numbers, `@-@` for hyphens). Each article is about one invented subject of one
kind (town, person, ship, album, storm). A section opens with a paragraph of that kind's fixed sentences and goes
on with paragraphs of dated events (`In 1884 , the ship ...`), so a small LM finds structure to learn: recurring
phrases, subject-verb-object patterns, the subject's names repeated through its article, years that only rise.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    """What articles about one kind of subject say; `{slot}`s are filled from `Slots`."""

    title: str
    subjects: list[str]
    """Who does the events: the subject's name or a pronoun (a sentence's first letter is capitalised later)."""
    events: list[str]
    """Predicates that follow a subject; their slots are mostly fresh, so an event can recur with new values."""
    sections: dict[str, list[str]]
    """Fixed sentences per section, the lead ("") first; each is said at most once per article."""
    years: tuple[int, int]
    """Range of the article's first year; later years only rise from it."""
    openers: tuple[str, ...] = (
        "In {year} ,",
        "On {day} {month} {year} ,",
        "In {month} {year} ,",
        "The following year ,",
        "After {small} years ,",
    )


KINDS: dict[str, Kind] = {
    "town": Kind(
        "{place}",
        ["{place}", "the {settlement}", "the council of {place}"],
        [
            "received a charter from the king of {country}",
            "opened a new {landmark2} near the {river} River",
            "was connected by road to {city2}",
            "lost {small} houses in a flood of the {river} River",
            "built a school for {hundreds} pupils",
            "became the seat of the {region} district",
        ],
        {
            "": [
                "{place} is a {settlement} in the {region} region of {country} .",
                "It lies on the {river} River , about {distance} kilometres ( {miles} mi ) {direction} of {city} .",
                "At the {year} census the {settlement} had a population of {population} .",
            ],
            "History": [
                "The {settlement} was founded in {year} by settlers from {city} .",
                "The railway reached {place} in {year} , and the population grew to {population2} by {year} .",
            ],
            "Geography": [
                "{place} stands at an elevation of {elevation} metres ( {elevation_feet} ft ) above sea level .",
                "The climate is {climate} , with an average rainfall of {rainfall} millimetres a year .",
            ],
            "Economy": [
                "The local economy is based on {industry} and {industry2} .",
                "The weekly market in {place} is one of the largest in the {region} region .",
            ],
        },
        (1700, 1900),
    ),
    "person": Kind(
        "{first} {surname}",
        ["{surname}", "{he}"],
        [
            "moved to {city3} , where {he} worked as a {occupation} for {small} years",
            "won the {city2} Prize for {his} work on the {adjective} {noun}",
            "was elected to the council of {city} with {population} votes",
            "married {first2} {surname2} , a {occupation2} from {city2}",
            "travelled to {country2} and spent {small} months in {city4}",
            "was appointed director of the {city3} Academy",
        ],
        {
            "": [
                "{first} {surname} ( {born_on} – {died_on} ) was {a_demonym} {occupation} .",
                "{he} is best known for {his} work in {city} during the {decade} .",
            ],
            "Early life": [
                "{surname} was born in {city} , {country} , the {ordinal} of {children} children .",
                "{he} studied at the University of {city2} , graduating in {year} .",
            ],
            "Career": [
                "{his} first major success came in {year} , when {he} won the {city2} Prize .",
                "By {year} {he} had become one of the best known {occupation}s in {country} .",
            ],
            "Death and legacy": [
                "{surname} died in {city} on {died_on} , at the age of {age} .",
                "A street in {city3} was named after {first} {surname} in {year} .",
            ],
        },
        (1800, 1940),
    ),
    "ship": Kind(
        "{prefix} {vessel}",
        ["{vessel}", "she", "the ship"],
        [
            "sailed from {city} to {city2} with the {sea} Squadron",
            "was damaged in a storm off {city2} and returned to {city} for repairs",
            "fired {small} shells during the bombardment of {city3}",
            "escorted a convoy of {small} merchant ships to {city3}",
            "was placed in reserve at {city}",
            "carried {crew} troops across the {sea} Sea",
        ],
        {
            "": [
                "{prefix} {vessel} was a {shipclass} of the Navy of {country} , named after the {river} River .",
                "She was laid down in {year} , launched in {year} and commissioned on {day} {month} {year} .",
            ],
            "Design": [
                "{vessel} was {length} metres ( {length_feet} ft ) long and displaced {tons} long tons .",
                "She was armed with {guns} guns and had a crew of {crew} officers and men .",
                "Her engines gave her a top speed of {knots} knots ( {knots_kmh} km / h ) .",
            ],
            "Service history": [
                "In {year} {vessel} joined the {sea} Squadron at {city} .",
                "{vessel} was sold for scrap in {year} .",
            ],
        },
        (1860, 1940),
    ),
    "album": Kind(
        "{album} ( {band} album )",
        ["{band}", "the band"],
        [
            "toured {country2} for {small} weeks to promote {album}",
            "played {album} in full at the {city} {festival} festival",
            'released " {adjective} {noun} " as the {ordinal2} single from {album}',
            'recorded a video for " {adjective2} {noun2} " in {city}',
            "appeared on television in {city2} to perform songs from {album}",
        ],
        {
            "": [
                "{album} is the {ordinal} studio album by {demonym} {genre} band {band} .",
                "It was released on {day} {month} {year} by {band} Records .",
                "The album peaked at number {chart} on the {country} Albums Chart .",
            ],
            "Recording": [
                "{band} recorded {album} in {city} over {small} weeks in {year} .",
                "Most of the songs were written by the singer {first} {surname} .",
            ],
            "Reception": [
                "{album} received {reception} reviews from music critics .",
                "The album sold {population} copies in its first year and was certified gold .",
            ],
        },
        (1965, 2005),
    ),
    "storm": Kind(
        "Tropical Storm {storm} ( {season} )",
        ["{storm}", "the storm"],
        [
            "brought heavy rain to {city} and {city2}",
            "turned {direction} and strengthened over the {sea} Sea",
            "caused {small} deaths in {country}",
            "produced winds of {mph} mph ( {mph_kmh} km / h ) near {city2}",
            "damaged {population} homes in the {region} region",
        ],
        {
            "": [
                "Tropical Storm {storm} was a {strength} tropical cyclone that struck {country} in {season} .",
                "The storm caused {damage} million in damage and killed {small} people .",
            ],
            "Meteorological history": ["{storm} developed from a tropical wave east of {city} on {day} {month} ."],
            "Impact": ["Heavy rain fell across {country} , with up to {rainfall} millimetres recorded in {city} ."],
            "Aftermath": ["The name {storm} was retired after the season and will not be used again ."],
        },
        (1900, 2010),
        ("On {day} {month} ,", "Later that day ,", "Early on {day} {month} ,", "By {day} {month} ,"),
    ),
}

# Invented names are glued from these syllables, so no real place, person or work is named.
SYLLABLES = (
    "al",
    "an",
    "ar",
    "bel",
    "bor",
    "ca",
    "dor",
    "el",
    "en",
    "fal",
    "gar",
    "har",
    "is",
    "kel",
    "lan",
    "mar",
    "mor",
    "nor",
    "or",
    "ra",
    "ren",
    "sa",
    "sel",
    "tor",
    "ul",
    "val",
    "ven",
)
PLACE_ENDINGS = ["", "", "ford", "ton", "by", "wick", "mouth", "field", "holm", "bury", "stead"]
CHOICES = {
    "first": "Edwin Marta Oskar Ilse Tomas Greta Anton Lena Hugo Clara Felix Nora Victor Alma Leon Irene",
    "month": "January February March April May June July August September October November December",
    "ordinal": "first second third fourth fifth sixth",
    "adjective": "Silver Quiet Broken Golden Distant Northern Hollow Burning Little Endless Pale Wild",
    "noun": "Harbour Garden Letters Mirror Season River Lanterns Crown Winter Machine Orchard Tide",
    "children": "three four five seven",
    "direction": "north south east west",
    "he": "he she",
    "settlement": "town|village|city|market town",
    "occupation": "painter composer politician sculptor botanist surveyor",
    "landmark": "cathedral|stone bridge|castle|clock tower|town hall",
    "festival": "harvest music lantern fishing",
    "climate": "mild and wet|dry and warm|cold in winter and warm in summer",
    "industry": "farming fishing textiles timber tourism mining",
    "shipclass": "protected cruiser|destroyer|gunboat|battleship",
    "genre": "rock|folk|pop|jazz|post @-@ punk",
    "reception": "positive|mixed|generally favourable",
    "strength": "weak|strong|short @-@ lived|long @-@ lived",
}
RANGES = {  # inclusive bounds of numeric slots
    "day": (1, 28),
    "small": (2, 40),
    "chart": (1, 40),
    "hundreds": (100, 900),
    "population": (800, 250_000),
    "distance": (5, 90),
    "elevation": (10, 900),
    "length": (60, 180),
    "rainfall": (300, 2400),
    "tons": (900, 16_000),
    "guns": (4, 12),
    "crew": (90, 700),
    "knots": (14, 32),
    "mph": (40, 120),
}
# A new value each time; every other slot keeps its first value through an article. Numbers that another slot
# converts to other units stay, so `52 kilometres ( 32 mi )` agree.
FRESH = {"year"} | RANGES.keys() - {"distance", "elevation", "length", "knots", "mph"}


def _name(rng: random.Random, syllables: int = 2) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def _number(value: int) -> str:
    """Wikitext-raw writes thousands separators as ` @,@ `: `12 @,@ 345`."""
    return f"{value:,}".replace(",", " @,@ ")


def _next_year(slots: Slots) -> str:
    slots.year += slots.rng.randint(1, 6)  # years only rise through an article, a pattern worth learning
    return str(slots.year)


FILLERS: dict[str, Callable[[Slots], str]] = {
    "place": lambda s: _name(s.rng) + s.rng.choice(PLACE_ENDINGS),
    "city": lambda s: _name(s.rng) + s.rng.choice(PLACE_ENDINGS),
    "country": lambda s: _name(s.rng) + "ia",
    "demonym": lambda s: s["country"] + "n",
    "region": lambda s: _name(s.rng, 3),
    "river": lambda s: _name(s.rng),
    "sea": lambda s: _name(s.rng),
    "vessel": lambda s: _name(s.rng),
    "surname": lambda s: _name(s.rng) + s.rng.choice(["", "s", "son", "er"]),
    "storm": lambda s: s["first"],
    "band": lambda s: "The " + _name(s.rng) + "s",
    "album": lambda s: s["adjective"] + " " + s["noun"],
    "prefix": lambda s: s["country"][0] + "NS",
    "his": lambda s: "his" if s["he"] == "he" else "her",
    "year": _next_year,
    "a_demonym": lambda s: ("an " if s["demonym"][0] in "AEIOU" else "a ") + s["demonym"],
    "born_on": lambda s: f"{s['day']} {s['month']} {s.start}",
    "died_on": lambda s: f"{s['day']} {s['month2']} {s['died']}",
    "season": lambda s: str(s.start),
    "died": lambda s: str(s.start + s.rng.randint(55, 90)),
    "age": lambda s: str(int(s["died"]) - s.start - 1),
    "decade": lambda s: f"{s.start // 10 * 10 + 20}s",
    "miles": lambda s: str(round(int(s["distance"]) * 0.62)),
    "elevation_feet": lambda s: str(round(int(s["elevation"]) * 3.28)),
    "length_feet": lambda s: str(round(int(s["length"]) * 3.28)),
    "knots_kmh": lambda s: str(round(int(s["knots"]) * 1.85)),
    "mph_kmh": lambda s: str(round(int(s["mph"]) * 1.61)),
    "damage": lambda s: f"$ {s.rng.randint(1, 90)} @.@ {s.rng.randint(1, 9)}",
}


class Slots(dict):
    """One article's slot values: `str.format_map` asks for each, and a missing one is drawn from its filler."""

    def __init__(self, rng: random.Random, years: tuple[int, int]) -> None:
        super().__init__()
        self.rng = rng
        self.start = rng.randint(*years)
        self.year = self.start

    def __missing__(self, key: str) -> str:
        filler = key.rstrip(string.digits)  # `city2` is a second city, kept apart from `city`
        if filler in FILLERS:
            value = FILLERS[filler](self)
        elif filler in RANGES:
            value = _number(self.rng.randint(*RANGES[filler]))
        else:
            words = CHOICES[filler]
            value = self.rng.choice(words.split("|" if "|" in words else None))
        if filler not in FRESH:
            self[key] = value
        return value


def _sentence(template: str, slots: Slots) -> str:
    text = template.format_map(slots)
    return text[0].upper() + text[1:]


def _event_paragraph(rng: random.Random, kind: Kind, slots: Slots) -> str:
    sentences = []
    for event in rng.sample(kind.events, rng.randint(2, len(kind.events))):
        opener = rng.choice(kind.openers) + " " if rng.random() < 0.7 else ""
        sentences.append(_sentence(f"{opener}{rng.choice(kind.subjects)} {event} .", slots))
    return " ".join(sentences)


def article_lines(rng: random.Random, taken_titles: set[str]) -> list[str]:
    """One article as Wikitext-raw lines ("" for an empty line), about a subject whose title is not taken yet."""
    kind = KINDS[rng.choice(sorted(KINDS))]
    slots = Slots(rng, kind.years)
    while (title := kind.title.format_map(slots)) in taken_titles:  # no article repeats another, in any split
        slots = Slots(rng, kind.years)
    taken_titles.add(title)
    lines = ["", f" = {title} = ", ""]
    for heading, fixed in kind.sections.items():
        if heading and rng.random() < 0.25:  # articles of one kind differ in which sections they have
            continue
        lines += ["", f" = = {heading} = = ", ""] if heading else []
        paragraphs = [" ".join(_sentence(template, slots) for template in fixed)]
        paragraphs += [_event_paragraph(rng, kind, slots) for _ in range(rng.randint(0, 3))]
        lines += [f" {paragraph} " for paragraph in paragraphs]
    return lines


def generate_lines(rng: random.Random, words: int, taken_titles: set[str]) -> Iterator[str]:
    """Whole articles until at least `words` whitespace-separated words (punctuation counts, as in Wikitext)."""
    written = 0
    while written < words:
        for line in article_lines(rng, taken_titles):
            written += len(line.split())
            yield line
