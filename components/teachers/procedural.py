"""The embedded offline teacher: GSM8K-style word problems that are correct by construction.

Each *family* draws its quantities from a seeded `random.Random`, renders the story in one of
several phrasings, and writes the step-by-step solution with `arith.Solution`, which computes
every step exactly (fractions) and annotates it GSM8K-style (``<<6*4=24>>``). A draw whose answer
is not a positive integer (what a grade-school problem would ask for) is rejected and redrawn, so
the answer is right because it is the computation, not because a model wrote it.

Why procedural rather than a hard-coded list: it needs no network and no API key, makes as many
distinct problems as asked, and gives tests a teacher whose every answer can be re-derived.

    python -m components.teachers.procedural 5     # print five problems
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from typing import Callable

from components.teachers.arith import NotRepresentable, Solution

NAMES = [
    "Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark", "Tina", "Carla", "Ken",
    "Alexis", "Tobias", "Randy", "Joy", "Maddie", "Olivia", "Lucas", "Priya", "Mateo", "Aisha",
    "Hiro", "Fatima", "Diego", "Greta", "Omar", "Leila", "Sven", "Nadia", "Kofi", "Elena",
]
ITEMS = [  # (singular, plural)
    ("pencil", "pencils"), ("apple", "apples"), ("cookie", "cookies"), ("marble", "marbles"),
    ("sticker", "stickers"), ("book", "books"), ("cupcake", "cupcakes"), ("toy car", "toy cars"),
    ("seashell", "seashells"), ("balloon", "balloons"), ("muffin", "muffins"), ("card", "cards"),
]
CONTAINERS = ["box", "bag", "pack", "crate", "basket", "jar"]
GOODS = [  # things with a price
    "notebook", "shirt", "lamp", "backpack", "scarf", "puzzle", "water bottle", "hat", "mug",
    "board game",
]


class Reject(Exception):
    """The draw does not make a grade-school problem (non-integer or non-positive answer)."""


@dataclass(frozen=True)
class Problem:
    """One generated problem: the text, its step-by-step solution and its exact answer."""

    family: str
    question: str
    solution: str
    answer: Fraction


def _whole(value: Fraction) -> Fraction:
    if value.denominator != 1 or value <= 0:
        raise Reject
    return value


def _two_names(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(NAMES, 2)
    return a, b


# --- families -------------------------------------------------------------------------------
# Every family returns (question, Solution, answer). Numbers stay small enough for a 135M model
# to have a chance at the arithmetic, and large enough that guessing does not pay.


def unit_rate(rng: random.Random):
    name = rng.choice(NAMES)
    one, many = rng.choice(ITEMS)
    box = rng.choice(CONTAINERS)
    n_boxes, per_box, extra = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 15)
    q = rng.choice([
        f"{name} buys {n_boxes} {box}s of {many}. Each {box} has {per_box} {many}. "
        f"{name} already had {extra} {many}. How many {many} does {name} have now?",
        f"There are {per_box} {many} in each {box}. {name} has {n_boxes} {box}s and {extra} loose "
        f"{many}. How many {many} does {name} have in all?",
    ])
    s = Solution()
    boxed = s.step(f"The {box}s hold {{calc}} {many}.", f"{n_boxes}*{per_box}")
    total = s.step(f"In all {name} has {{calc}} {many}.", f"{boxed}+{extra}")
    return q, s, total


def discount(rng: random.Random):
    name = rng.choice(NAMES)
    good = rng.choice(GOODS)
    price = rng.choice(range(10, 201, 10))
    pct = rng.choice([10, 20, 25, 30, 40, 50])
    qty = rng.randint(2, 6)
    q = rng.choice([
        f"A {good} costs ${price}. The store has a {pct}% off sale. How much does {name} pay "
        f"for {qty} {good}s during the sale?",
        f"{name} wants {qty} {good}s that normally cost ${price} each. They are {pct}% off today. "
        f"How many dollars will {name} spend?",
    ])
    s = Solution()
    off = s.step(f"The discount on one {good} is {{calc}} dollars.", f"{price}*{pct}/100")
    each = _whole(s.step(f"So one {good} costs {{calc}} dollars.", f"{price}-{off}"))
    total = s.step(f"For {qty} {good}s {name} pays {{calc}} dollars.", f"{each}*{qty}")
    return q, s, total


def fraction_of(rng: random.Random):
    group = rng.choice([("students", "class"), ("trees", "orchard"), ("cars", "parking lot"),
                        ("players", "club")])
    den = rng.choice([2, 3, 4, 5, 6])
    num = rng.randint(1, den - 1)
    if gcd(num, den) != 1:
        raise Reject  # say 1/2, not 2/4
    total = den * rng.randint(3, 15)
    kind = rng.choice(["red", "new", "tall", "green"])
    q = rng.choice([
        f"A {group[1]} has {total} {group[0]}. {num}/{den} of them are {kind}. How many "
        f"{group[0]} in the {group[1]} are not {kind}?",
        f"There are {total} {group[0]} in a {group[1]}, and {num}/{den} of the {group[0]} are "
        f"{kind}. How many are not {kind}?",
    ])
    s = Solution()
    part = s.step(f"{{calc}} {group[0]} are {kind}.", f"{total}*{num}/{den}")
    rest = s.step(f"So {{calc}} {group[0]} are not {kind}.", f"{total}-{part}")
    return q, s, _whole(rest)


def ages(rng: random.Random):
    a, b = _two_names(rng)
    age_a, k, years = rng.randint(3, 15), rng.randint(2, 4), rng.randint(2, 10)
    q = rng.choice([
        f"{a} is {age_a} years old. {b} is {k} times as old as {a}. How old will {b} be in "
        f"{years} years?",
        f"{b}'s age is {k} times {a}'s age. If {a} is {age_a} now, how old will {b} be "
        f"{years} years from now?",
    ])
    s = Solution()
    now = s.step(f"{b} is {{calc}} years old now.", f"{age_a}*{k}")
    later = s.step(f"In {years} years {b} will be {{calc}} years old.", f"{now}+{years}")
    return q, s, later


def change(rng: random.Random):
    name = rng.choice(NAMES)
    g1, g2 = rng.sample(GOODS, 2)
    n1, p1, n2, p2 = rng.randint(2, 5), rng.randint(2, 15), rng.randint(1, 4), rng.randint(3, 20)
    budget = rng.choice([50, 100, 120, 150, 200])
    q = (f"{name} has ${budget}. {name} buys {n1} {g1}s for ${p1} each and {n2} {g2}s for ${p2} "
         f"each. How much money does {name} have left?")
    s = Solution()
    c1 = s.step(f"The {g1}s cost {{calc}} dollars.", f"{n1}*{p1}")
    c2 = s.step(f"The {g2}s cost {{calc}} dollars.", f"{n2}*{p2}")
    spent = s.step("Altogether that is {calc} dollars.", f"{c1}+{c2}")
    left = s.step(f"{name} has {{calc}} dollars left.", f"{budget}-{spent}")
    return q, s, _whole(left)


def speed(rng: random.Random):
    name = rng.choice(NAMES)
    s1, h1, s2, h2 = rng.randint(3, 12) * 5, rng.randint(1, 4), rng.randint(3, 12) * 5, rng.randint(1, 3)
    vehicle = rng.choice(["drives", "rides a train", "bikes"])
    q = (f"{name} {vehicle} at {s1} miles per hour for {h1} hours, then at {s2} miles per hour "
         f"for {h2} hours. How many miles does {name} travel in total?")
    s = Solution()
    d1 = s.step("First part: {calc} miles.", f"{s1}*{h1}")
    d2 = s.step("Second part: {calc} miles.", f"{s2}*{h2}")
    total = s.step("Total distance: {calc} miles.", f"{d1}+{d2}")
    return q, s, total


def fence(rng: random.Random):
    name = rng.choice(NAMES)
    length, width, cost = rng.randint(5, 30), rng.randint(3, 20), rng.randint(2, 9)
    q = rng.choice([
        f"{name}'s garden is a rectangle {length} feet long and {width} feet wide. Fencing costs "
        f"${cost} per foot. How much does it cost to fence the whole garden?",
        f"A rectangular yard measures {length} feet by {width} feet. {name} puts a fence around "
        f"it at ${cost} a foot. What is the total cost of the fence in dollars?",
    ])
    s = Solution()
    per = s.step("The perimeter is {calc} feet.", f"2*({length}+{width})")
    total = s.step("The fence costs {calc} dollars.", f"{per}*{cost}")
    return q, s, total


def area_tiles(rng: random.Random):
    name = rng.choice(NAMES)
    length, width = rng.randint(4, 20), rng.randint(3, 15)
    per_box = rng.choice([4, 5, 6, 8, 10])
    q = (f"{name} is tiling a floor that is {length} feet by {width} feet with one-square-foot "
         f"tiles. Tiles come in boxes of {per_box}. How many boxes must {name} buy?")
    s = Solution()
    area = s.step("The floor has an area of {calc} square feet.", f"{length}*{width}")
    if area % per_box:
        raise Reject  # keep it exact; remainders are the `grouping` family's skill
    boxes = s.step("So {name} needs {calc} boxes.".replace("{name}", name), f"{area}/{per_box}")
    return q, s, boxes


def average(rng: random.Random):
    name = rng.choice(NAMES)
    n = rng.randint(3, 5)
    scores = [rng.randint(60, 100) for _ in range(n)]
    if sum(scores) % n:
        scores[-1] += n - sum(scores) % n
        if scores[-1] > 100:
            raise Reject
    listed = ", ".join(str(x) for x in scores[:-1]) + f" and {scores[-1]}"
    q = rng.choice([
        f"{name} scored {listed} on {n} tests. What is {name}'s average score?",
        f"On {n} quizzes {name} got {listed} points. What was the mean number of points?",
    ])
    s = Solution()
    total = s.step("The scores add up to {calc}.", "+".join(map(str, scores)))
    mean = s.step("The average is {calc}.", f"{total}/{n}")
    return q, s, _whole(mean)


def wages(rng: random.Random):
    name = rng.choice(NAMES)
    rate, hours, days = rng.randint(8, 25), rng.randint(2, 8), rng.randint(3, 6)
    bonus = rng.choice([0, 10, 20, 25, 50])
    bonus_text = f" and gets a ${bonus} bonus at the end of the week" if bonus else ""
    q = (f"{name} earns ${rate} an hour and works {hours} hours a day for {days} days"
         f"{bonus_text}. How much does {name} earn that week?")
    s = Solution()
    daily = s.step("Each day pays {calc} dollars.", f"{rate}*{hours}")
    week = s.step(f"For {days} days that is {{calc}} dollars.", f"{daily}*{days}")
    if bonus:
        week = s.step("With the bonus: {calc} dollars.", f"{week}+{bonus}")
    return q, s, week


def comparison(rng: random.Random):
    a, b = _two_names(rng)
    one, many = rng.choice(ITEMS)
    x, k, extra = rng.randint(4, 30), rng.randint(2, 4), rng.randint(1, 12)
    q = rng.choice([
        f"{a} has {x} {many}. {b} has {extra} more than {k} times as many {many} as {a}. How "
        f"many more {many} does {b} have than {a}?",
        f"{b} collected {extra} more {many} than {k} times the {x} {many} that {a} collected. How "
        f"many more {many} did {b} collect than {a}?",
    ])
    s = Solution()
    times = s.step(f"{k} times {a}'s {many} is {{calc}}.", f"{k}*{x}")
    b_has = s.step(f"{b} has {{calc}} {many}.", f"{times}+{extra}")
    diff = s.step(f"{b} has {{calc}} more {many} than {a}.", f"{b_has}-{x}")
    return q, s, diff


def grouping(rng: random.Random):
    name = rng.choice(NAMES)
    one, many = rng.choice(ITEMS)
    per, full, left = rng.randint(3, 12), rng.randint(3, 15), rng.randint(1, 11)
    if left >= per:
        raise Reject
    total = per * full + left
    q = (f"{name} has {total} {many} and packs them into bags of {per}. After filling as many "
         f"bags as possible, how many {many} are left over?")
    s = Solution()
    filled = s.step(f"{name} can fill {full} full bags, which hold {{calc}} {many}.",
                    f"{full}*{per}")
    rest = s.step(f"That leaves {{calc}} {many}.", f"{total}-{filled}")
    return q, s, _whole(rest)


def ratio(rng: random.Random):
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    if a == b:
        raise Reject
    unit = rng.randint(2, 12)
    total = (a + b) * unit
    c1, c2 = rng.sample(["red", "blue", "green", "yellow", "white"], 2)
    one, many = rng.choice(ITEMS)
    q = (f"A bag holds {total} {many} that are either {c1} or {c2}. The ratio of {c1} to {c2} "
         f"{many} is {a}:{b}. How many {c1} {many} are in the bag?")
    s = Solution()
    parts = s.step("There are {calc} parts in the ratio.", f"{a}+{b}")
    each = s.step("Each part is {calc} " + many + ".", f"{total}/{parts}")
    first = s.step(f"The {c1} ones number {{calc}}.", f"{a}*{each}")
    return q, s, first


def schedule(rng: random.Random):
    name = rng.choice(NAMES)
    per_day = rng.randint(10, 60)
    days = rng.randint(3, 7)
    weeks = rng.randint(2, 4)
    act = rng.choice(["practises piano", "reads", "jogs", "studies"])
    q = (f"{name} {act} for {per_day} minutes a day, {days} days a week. How many hours does "
         f"{name} spend on it in {weeks} weeks?")
    s = Solution()
    weekly = s.step("Each week is {calc} minutes.", f"{per_day}*{days}")
    minutes = s.step(f"In {weeks} weeks that is {{calc}} minutes.", f"{weekly}*{weeks}")
    hours = s.step("That is {calc} hours.", f"{minutes}/60")
    return q, s, _whole(hours)


FAMILIES: dict[str, Callable[[random.Random], tuple]] = {
    f.__name__: f
    for f in (unit_rate, discount, fraction_of, ages, change, speed, fence, area_tiles, average,
              wages, comparison, grouping, ratio, schedule)
}


def make_problem(family: str, rng: random.Random, max_tries: int = 200) -> Problem:
    """Draw one problem of `family`, redrawing until the answer is a positive integer."""
    fn = FAMILIES[family]
    for _ in range(max_tries):
        try:
            question, sol, answer = fn(rng)
            answer = _whole(Fraction(answer))
        except (Reject, NotRepresentable):
            continue
        return Problem(family=family, question=question, solution=sol.render(answer), answer=answer)
    raise RuntimeError(f"family {family!r} rejected {max_tries} draws in a row")


if __name__ == "__main__":
    rng = random.Random(0)
    for i in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        p = make_problem(rng.choice(sorted(FAMILIES)), rng)
        print(f"[{p.family}] {p.question}\n{p.solution}\n")
