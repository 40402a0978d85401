"""The embedded offline teacher: GSM8K-style word problems that are correct by construction.

Each *family* builds a small computation graph (`tutorloop/teachers/graph.py`): it draws its
quantities from a seeded `random.Random`, states each given in one sentence chosen from several
phrasings, and declares how the asked quantity is computed. The solution is not written here:
`graph.solve` derives it step by step with exact fractions and GSM8K calculator annotations
(``<<6*4=24>>``). A draw whose answer or steps are not positive whole numbers (what a grade-school
problem would ask for) is rejected and redrawn.

Why graphs rather than finished strings: the agents need to *change* problems — ask for another
quantity (Ask-Me-Anything), add a step, a percentage, a unit conversion or a distractor, chain
two problems (Suggester/Editor) — and a graph lets every such variant be solved, and its answer
re-derived, without a model. It needs no network and no API key, and tests can check every answer.

    python -c "from tutorloop.teachers.procedural import build; print(*build('unit_rate', 0).render()[:2])"
"""

from __future__ import annotations

import random
from math import gcd
from typing import Callable

from tutorloop.teachers.graph import Graph, Reject, pick, plural

NAMES = [
    "Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark", "Tina", "Carla", "Ken",
    "Alexis", "Tobias", "Randy", "Joy", "Maddie", "Olivia", "Lucas", "Priya", "Mateo", "Aisha",
    "Hiro", "Fatima", "Diego", "Greta", "Omar", "Leila", "Sven", "Nadia", "Kofi", "Elena",
    "Ravi", "Chloe", "Bruno", "Yuki", "Amara", "Felix", "Ingrid", "Samir", "Lena", "Tomas",
]
ITEMS = [  # (singular, plural)
    ("pencil", "pencils"), ("apple", "apples"), ("cookie", "cookies"), ("marble", "marbles"),
    ("sticker", "stickers"), ("book", "books"), ("cupcake", "cupcakes"), ("toy car", "toy cars"),
    ("seashell", "seashells"), ("balloon", "balloons"), ("muffin", "muffins"), ("card", "cards"),
    ("orange", "oranges"), ("crayon", "crayons"), ("bead", "beads"), ("stamp", "stamps"),
]
CONTAINERS = ["box", "bag", "pack", "crate", "basket", "jar"]
GOODS = [
    "notebook", "shirt", "lamp", "backpack", "scarf", "puzzle", "water bottle", "hat", "mug",
    "board game", "pair of socks", "candle", "plant", "kite",
]


def _goods(good: str) -> str:
    if good.startswith("pair of"):
        return good.replace("pair of", "pairs of")
    return {"scarf": "scarves", "board game": "board games"}.get(good, good + "s")


# --- families -------------------------------------------------------------------------------
# Each family fills a Graph: `given` states a number in one sentence (with a question asking for
# it, used by Ask-Me-Anything), `derive` declares a computed quantity. The target needs a `fact`
# (the answer stated as a sentence) so AMA can turn the problem into a statement.


def unit_rate(g: Graph, rng: random.Random):
    name = g.subject
    one, many = rng.choice(ITEMS)
    box = rng.choice(CONTAINERS)
    g.given("boxes", rng.randint(2, 9), f"the number of {box}es" if box == "box" else f"the number of {box}s",
            fact=f"{name} buys {{v}} {box}{'es' if box == 'box' else 's'} of {many}.",
            ask=f"How many {box}{'es' if box == 'box' else 's'} of {many} did {name} buy?")
    g.given("per", rng.randint(3, 12), f"the number of {many} in each {box}",
            fact=pick(rng, f"Each {box} has {{v}} {many}.", f"There are {{v}} {many} in every {box}."),
            ask=f"How many {many} are in each {box}?")
    g.given("extra", rng.randint(1, 15), f"the number of {many} {name} already had",
            fact=f"{name} already had {{v}} {many}.", ask=f"How many {many} did {name} have before?")
    g.derive("bought", "{boxes}*{per}", f"the number of {many} {name} bought",
             step=f"The {box}{'es' if box == 'box' else 's'} hold {{calc}} {many}.",
             ask=f"How many {many} did {name} buy?", noun=many)
    g.derive("total", "{bought}+{extra}", f"the number of {many} {name} has now",
             step=f"In all {name} has {{calc}} {many}.", fact=f"Now {name} has {{v}} {many}.",
             ask=pick(rng, f"How many {many} does {name} have now?", f"How many {many} does {name} have in all?"),
             noun=many)
    return "total"


def discount(g: Graph, rng: random.Random):
    name, good = g.subject, rng.choice(GOODS)
    g.const("hundred", 100)
    g.given("price", rng.choice(range(10, 201, 10)), f"the regular price of a {good}",
            fact=f"A {good} normally costs ${{v}}.", ask=f"What is the regular price of a {good}?",
            unit="money")
    g.given("pct", rng.choice([10, 20, 25, 30, 40, 50]), "the discount percentage",
            fact=pick(rng, "The store has a {v}% off sale.", "Everything is {v}% off today."),
            ask="What percentage is the discount?", unit="percent")
    g.given("qty", rng.randint(2, 6), f"the number of {_goods(good)} {name} buys",
            fact=f"{name} buys {{v}} {_goods(good)} during the sale.", ask=f"How many {_goods(good)} does {name} buy?")
    g.derive("off", "{price}*{pct}/{hundred}", f"the discount on one {good}",
             step=f"The discount on one {good} is {{calc}} dollars.", unit="money")
    g.derive("each", "{price}-{off}", f"the sale price of one {good}",
             step=f"So one {good} costs {{calc}} dollars.", ask=f"How much does one {good} cost during the sale?",
             unit="money")
    g.derive("total", "{each}*{qty}", f"the amount {name} pays",
             step=f"For {{qty}} {_goods(good)} {name} pays {{calc}} dollars.".replace("{qty}", "the"),
             fact=f"{name} pays ${{v}} in total.", ask=f"How much does {name} pay in total?", unit="money")
    return "total"


def fraction_of(g: Graph, rng: random.Random):
    things, place = rng.choice([("students", "class"), ("trees", "orchard"), ("cars", "parking lot"),
                                ("players", "club"), ("flowers", "garden")])
    den = rng.choice([2, 3, 4, 5, 6, 8])
    num = rng.randint(1, den - 1)
    if gcd(num, den) != 1:
        raise Reject
    kind = rng.choice(["red", "new", "tall", "green", "small"])
    g.given("total", den * rng.randint(3, 15), f"the number of {things} in the {place}",
            fact=f"A {place} has {{v}} {things}.", ask=f"How many {things} are in the {place}?")
    g.const("num", num)
    g.const("den", den)
    g.text(f"{num}/{den} of them are {kind}.")
    g.derive("part", "{total}*{num}/{den}", f"the number of {kind} {things}",
             step=f"{{calc}} {things} are {kind}.", ask=f"How many {things} in the {place} are {kind}?", noun=things)
    g.derive("rest", "{total}-{part}", f"the number of {things} that are not {kind}",
             step=f"So {{calc}} {things} are not {kind}.", fact=f"{{v}} of the {things} are not {kind}.",
             ask=f"How many {things} in the {place} are not {kind}?", noun=things)
    return "rest"


def ages(g: Graph, rng: random.Random):
    a = g.subject
    b = rng.choice([n for n in NAMES if n != a])
    g.given("age_a", rng.randint(3, 15), f"{a}'s age", fact=f"{a} is {{v}} years old.",
            ask=f"How old is {a}?", unit="years")
    g.given("k", rng.randint(2, 4), f"how many times as old as {a} {b} is",
            fact=f"{b} is {{v}} times as old as {a}.", ask=f"How many times as old as {a} is {b}?", unit="times")
    g.given("years", rng.randint(2, 10), "the number of years from now",
            fact=f"Think of {b} {{v}} years from now.", ask=f"In how many years will {b} reach that age?",
            unit="years")
    g.derive("now", "{age_a}*{k}", f"{b}'s age now", step=f"{b} is {{calc}} years old now.",
             ask=f"How old is {b} now?", unit="years")
    g.derive("later", "{now}+{years}", f"{b}'s age then", step=f"Then {b} will be {{calc}} years old.",
             fact=f"{b} will then be {{v}} years old.", ask=f"How old will {b} be then?", unit="years")
    return "later"


def change(g: Graph, rng: random.Random):
    name = g.subject
    g1, g2 = rng.sample(GOODS, 2)
    g.given("budget", rng.choice([50, 60, 80, 100, 120, 150, 200]), f"the money {name} had",
            fact=f"{name} has ${{v}}.", ask=f"How much money did {name} have at first?", unit="money")
    g.given("n1", rng.randint(2, 5), f"the number of {_goods(g1)}", fact=f"{name} buys {{v}} {_goods(g1)}.",
            ask=f"How many {_goods(g1)} does {name} buy?")
    g.given("p1", rng.randint(2, 15), f"the price of one {g1}", fact=f"Each {g1} costs ${{v}}.",
            ask=f"How much does one {g1} cost?", unit="money")
    g.given("n2", rng.randint(1, 4), f"the number of {_goods(g2)}", fact=f"{name} also buys {{v}} {_goods(g2)}.",
            ask=f"How many {_goods(g2)} does {name} buy?")
    g.given("p2", rng.randint(3, 20), f"the price of one {g2}", fact=f"One {g2} costs ${{v}}.",
            ask=f"How much does one {g2} cost?", unit="money")
    g.derive("c1", "{n1}*{p1}", f"the cost of the {_goods(g1)}", step=f"The {_goods(g1)} cost {{calc}} dollars.",
             unit="money")
    g.derive("c2", "{n2}*{p2}", f"the cost of the {_goods(g2)}", step=f"The {_goods(g2)} cost {{calc}} dollars.",
             unit="money")
    g.derive("spent", "{c1}+{c2}", f"the money {name} spends", step="Altogether that is {calc} dollars.",
             ask=f"How much does {name} spend?", unit="money")
    g.derive("left", "{budget}-{spent}", f"the money {name} has left", step=f"{name} has {{calc}} dollars left.",
             fact=f"{name} has ${{v}} left.", ask=f"How much money does {name} have left?", unit="money")
    return "left"


def speed(g: Graph, rng: random.Random):
    name = g.subject
    verb = rng.choice(["drives", "rides a train", "bikes"])
    g.given("s1", rng.randint(3, 12) * 5, "the first speed", fact=f"{name} {verb} at {{v}} miles per hour at first.",
            ask=f"How fast did {name} go at first, in miles per hour?", unit="mph")
    h1 = g.given("h1", rng.randint(1, 4), "the first time", fact="", ask="")
    g.q["h1"].fact = f"That part takes {{v}} {plural(h1, 'hour', 'hours')}."
    g.q["h1"].ask = "How many hours did the first part take?"
    g.q["h1"].unit = "hours"
    g.given("s2", rng.randint(3, 12) * 5, "the second speed", fact="Then the speed is {v} miles per hour.",
            ask="What was the speed in the second part, in miles per hour?", unit="mph")
    h2 = g.given("h2", rng.randint(1, 3), "the second time", fact="", ask="How many hours did the second part take?",
                 unit="hours")
    g.q["h2"].fact = f"The second part lasts {{v}} {plural(h2, 'hour', 'hours')}."
    g.derive("d1", "{s1}*{h1}", "the first distance", step="First part: {calc} miles.",
             ask="How many miles is the first part?", unit="miles")
    g.derive("d2", "{s2}*{h2}", "the second distance", step="Second part: {calc} miles.", unit="miles")
    g.derive("total", "{d1}+{d2}", "the total distance", step="Total distance: {calc} miles.",
             fact=f"{name} travels {{v}} miles in total.", ask=f"How many miles does {name} travel in total?",
             unit="miles")
    return "total"


def fence(g: Graph, rng: random.Random):
    name = g.subject
    g.const("two", 2)
    g.text(f"{name}'s garden is a rectangle.")
    g.given("length", rng.randint(5, 30), "the length", fact="It is {v} feet long.",
            ask="How long is the garden in feet?", unit="feet")
    g.given("width", rng.randint(3, 20), "the width", fact="It is {v} feet wide.",
            ask="How wide is the garden in feet?", unit="feet")
    g.given("cost", rng.randint(2, 9), "the cost per foot of fence", fact="Fencing costs ${v} per foot.",
            ask="How much does fencing cost per foot?", unit="money")
    g.derive("per", "{two}*({length}+{width})", "the perimeter", step="The perimeter is {calc} feet.",
             ask="What is the perimeter of the garden in feet?", unit="feet")
    g.derive("total", "{per}*{cost}", "the cost of the fence", step="The fence costs {calc} dollars.",
             fact="The whole fence costs ${v}.", ask="How much does it cost to fence the whole garden?", unit="money")
    return "total"


def area_tiles(g: Graph, rng: random.Random):
    name = g.subject
    g.text(f"{name} is tiling a rectangular floor with one-square-foot tiles.")
    g.given("length", rng.randint(4, 20), "the length of the floor", fact="The floor is {v} feet long.",
            ask="How long is the floor in feet?", unit="feet")
    g.given("width", rng.randint(3, 15), "the width of the floor", fact="It is {v} feet wide.",
            ask="How wide is the floor in feet?", unit="feet")
    g.given("per_box", rng.choice([4, 5, 6, 8, 10]), "the number of tiles in a box",
            fact="Tiles come in boxes of {v}.", ask="How many tiles are in each box?")
    g.derive("area", "{length}*{width}", "the area", step="The floor has an area of {calc} square feet.",
             ask="What is the area of the floor in square feet?", unit="sqft")
    g.derive("boxes", "{area}/{per_box}", "the number of boxes", step=f"So {name} needs {{calc}} boxes.",
             fact=f"{name} needs {{v}} boxes.", ask=f"How many boxes must {name} buy?", noun="boxes")
    return "boxes"


def average(g: Graph, rng: random.Random):
    name = g.subject
    n = rng.randint(3, 5)
    scores = [rng.randint(60, 100) for _ in range(n)]
    scores[-1] += (-sum(scores)) % n
    if scores[-1] > 100:
        raise Reject
    ordinal = ["first", "second", "third", "fourth", "fifth"]
    g.text(f"{name} took {n} tests.")
    for i, s in enumerate(scores):
        g.given(f"s{i}", s, f"the score on the {ordinal[i]} test",
                fact=pick(rng, f"{name} scored {{v}} on the {ordinal[i]} test.", f"The {ordinal[i]} score was {{v}}."),
                ask=f"What did {name} score on the {ordinal[i]} test?", unit="points")
    g.const("n", n)
    g.derive("sum", "+".join(f"{{s{i}}}" for i in range(n)), "the total of the scores",
             step="The scores add up to {calc}.", ask=f"What is the total of {name}'s scores?", unit="points")
    g.derive("mean", "{sum}/{n}", "the average", step="The average is {calc}.",
             fact=f"{name}'s average score is {{v}}.", ask=f"What is {name}'s average score?", unit="points")
    return "mean"


def wages(g: Graph, rng: random.Random):
    name = g.subject
    g.given("rate", rng.randint(8, 25), "the hourly pay", fact=f"{name} earns ${{v}} an hour.",
            ask=f"How much does {name} earn per hour?", unit="money")
    g.given("hours", rng.randint(2, 8), "the hours worked each day", fact="The shift is {v} hours a day.",
            ask=f"How many hours a day does {name} work?", unit="hours")
    g.given("days", rng.randint(3, 6), "the number of work days", fact=f"{name} works {{v}} days this week.",
            ask=f"How many days does {name} work this week?", unit="days")
    g.given("bonus", rng.choice([10, 20, 25, 50]), "the bonus", fact="There is also a ${v} bonus at the end of the week.",
            ask="How big is the weekly bonus in dollars?", unit="money")
    g.derive("daily", "{rate}*{hours}", "the daily pay", step="Each day pays {calc} dollars.",
             ask=f"How much does {name} earn each day?", unit="money")
    g.derive("base", "{daily}*{days}", "the pay before the bonus", step="For the week that is {calc} dollars.",
             unit="money")
    g.derive("week", "{base}+{bonus}", "the week's earnings", step="With the bonus: {calc} dollars.",
             fact=f"{name} earns ${{v}} that week.", ask=f"How much does {name} earn that week?", unit="money")
    return "week"


def comparison(g: Graph, rng: random.Random):
    a = g.subject
    b = rng.choice([n for n in NAMES if n != a])
    one, many = rng.choice(ITEMS)
    g.given("x", rng.randint(4, 30), f"the number of {many} {a} has", fact=f"{a} has {{v}} {many}.",
            ask=f"How many {many} does {a} have?")
    g.given("k", rng.randint(2, 4), "the multiple", fact=f"{b} starts with {{v}} times as many {many} as {a}.",
            ask=f"How many times as many {many} as {a} does {b} start from?", unit="times")
    g.given("extra", rng.randint(1, 12), "the extra", fact=f"Then {b} finds {{v}} more {many}.",
            ask=f"How many more {many} does {b} find?")
    g.derive("times", "{k}*{x}", f"{b}'s {many} before the extra", step=f"The multiple of {a}'s {many} is {{calc}}.")
    g.derive("b_has", "{times}+{extra}", f"the number of {many} {b} has", step=f"{b} has {{calc}} {many}.",
             ask=f"How many {many} does {b} have?", noun=many)
    g.derive("diff", "{b_has}-{x}", "the difference", step=f"{b} has {{calc}} more {many} than {a}.",
             fact=f"{b} has {{v}} more {many} than {a}.", ask=f"How many more {many} does {b} have than {a}?",
             noun=many)
    return "diff"


def grouping(g: Graph, rng: random.Random):
    name = g.subject
    one, many = rng.choice(ITEMS)
    per, full, left = rng.randint(3, 12), rng.randint(3, 15), rng.randint(1, 11)
    if left >= per:
        raise Reject
    g.given("total", per * full + left, f"the number of {many}", fact=f"{name} has {{v}} {many}.",
            ask=f"How many {many} does {name} have?")
    g.given("per", per, "the bag size", fact="{name} packs them into bags of {v}.".replace("{name}", name),
            ask="How many fit in one bag?")
    # floor division has no inverse: this relation runs forwards only (AMA skips what needs it)
    g.derive("full", "{total}/{per}", "the number of full bags", fn=lambda total, per: total // per,
             step=f"{{total}} / {{per}} is {{value}} with a remainder, so {name} fills {{value}} bags.",
             noun="bags")  # not asked alone: its step has no calculator annotation to check
    g.derive("packed", "{full}*{per}", f"the {many} in full bags", step=f"The full bags hold {{calc}} {many}.",
             ask=f"How many {many} go into bags if {name} fills as many bags as possible?", noun=many)
    g.derive("rest", "{total}-{packed}", f"the {many} left over", step=f"That leaves {{calc}} {many}.",
             ask=f"After filling as many bags as possible, how many {many} are left over?", noun=many)
    return "rest"


def ratio(g: Graph, rng: random.Random):
    a, b = rng.randint(1, 6), rng.randint(1, 6)
    if a == b or gcd(a, b) != 1:
        raise Reject
    c1, c2 = rng.sample(["red", "blue", "green", "yellow", "white"], 2)
    one, many = rng.choice(ITEMS)
    g.given("total", (a + b) * rng.randint(2, 12), f"the number of {many} in the bag",
            fact=f"A bag holds {{v}} {many} that are either {c1} or {c2}.", ask=f"How many {many} are in the bag?")
    g.const("a", a)
    g.const("b", b)
    g.text(f"The ratio of {c1} to {c2} {many} is {a}:{b}.")
    g.derive("parts", "{a}+{b}", "the number of parts", step="There are {calc} parts in the ratio.")
    g.derive("each", "{total}/{parts}", "one part", step=f"Each part is {{calc}} {many}.")
    g.derive("first", "{a}*{each}", f"the number of {c1} {many}", step=f"The {c1} ones number {{calc}}.",
             fact=f"{{v}} of them are {c1}.", ask=f"How many {c1} {many} are in the bag?", noun=many)
    return "first"


def schedule(g: Graph, rng: random.Random):
    name = g.subject
    act = rng.choice(["practises piano", "reads", "jogs", "studies"])
    g.const("sixty", 60)
    g.given("per_day", rng.randint(10, 60), "the minutes per day", fact=f"{name} {act} for {{v}} minutes a day.",
            ask=f"How many minutes a day does {name} spend on it?", unit="minutes")
    g.given("days", rng.randint(3, 7), "the days per week", fact=f"{name} does it {{v}} days a week.",
            ask="How many days a week is that?", unit="days")
    g.given("weeks", rng.randint(2, 4), "the number of weeks", fact="Count a period of {v} weeks.",
            ask="How many weeks long is the period?", unit="weeks")
    g.derive("weekly", "{per_day}*{days}", "the minutes per week", step="Each week is {calc} minutes.",
             ask=f"How many minutes a week does {name} spend on it?", unit="minutes")
    g.derive("minutes", "{weekly}*{weeks}", "the total minutes", step="In all that is {calc} minutes.", unit="minutes")
    g.derive("hours", "{minutes}/{sixty}", "the total hours", step="That is {calc} hours.",
             fact=f"{name} spends {{v}} hours on it.", ask=f"How many hours does {name} spend on it in that period?",
             unit="hours")
    return "hours"


def percent_increase(g: Graph, rng: random.Random):
    name, good = g.subject, rng.choice(GOODS)
    g.const("hundred", 100)
    g.given("old", rng.choice(range(20, 301, 20)), f"last year's price of a {good}",
            fact=f"Last year a {good} cost ${{v}}.", ask=f"What did a {good} cost last year?", unit="money")
    g.given("pct", rng.choice([5, 10, 15, 20, 25, 50]), "the price increase percentage",
            fact="This year the price went up by {v}%.", ask="By what percentage did the price go up?", unit="percent")
    g.given("qty", rng.randint(2, 5), f"the number of {_goods(good)}", fact=f"{name} buys {{v}} {_goods(good)} this year.",
            ask=f"How many {_goods(good)} does {name} buy?")
    g.derive("rise", "{old}*{pct}/{hundred}", "the increase", step="The price rose by {calc} dollars.", unit="money")
    g.derive("new", "{old}+{rise}", f"this year's price of a {good}", step="The new price is {calc} dollars.",
             ask=f"What does a {good} cost this year?", unit="money")
    g.derive("total", "{new}*{qty}", "the total cost", step=f"{name} pays {{calc}} dollars.",
             fact=f"{name} pays ${{v}}.", ask=f"How much does {name} pay?", unit="money")
    return "total"


def work_rate(g: Graph, rng: random.Random):
    a = g.subject
    b = rng.choice([n for n in NAMES if n != a])
    thing = rng.choice(["boxes", "cards", "baskets", "shirts"])
    r1, r2 = rng.randint(3, 15), rng.randint(3, 15)
    g.given("r1", r1, f"{a}'s rate", fact=f"{a} can pack {{v}} {thing} an hour.",
            ask=f"How many {thing} can {a} pack in an hour?", unit="rate")
    g.given("r2", r2, f"{b}'s rate", fact=f"{b} can pack {{v}} {thing} an hour.",
            ask=f"How many {thing} can {b} pack in an hour?", unit="rate")
    g.given("total", (r1 + r2) * rng.randint(2, 8), f"the number of {thing} to pack",
            fact=f"They have {{v}} {thing} to pack.", ask=f"How many {thing} did they have to pack?")
    g.derive("both", "{r1}+{r2}", "their combined rate", step=f"Together they pack {{calc}} {thing} an hour.",
             ask=f"How many {thing} do they pack in an hour together?", unit="rate")
    g.derive("hours", "{total}/{both}", "the time it takes", step="It takes {calc} hours.",
             fact="Working together, it takes them {v} hours.", ask="How many hours does it take them working together?",
             unit="hours")
    return "hours"


def shopping(g: Graph, rng: random.Random):
    name = g.subject
    items = rng.sample(GOODS, 3)
    for i, good in enumerate(items):
        g.given(f"n{i}", rng.randint(2, 5), f"the number of {_goods(good)}",
                fact=f"{name} buys {{v}} {_goods(good)}" + (" at a fair." if i == 0 else "."),
                ask=f"How many {_goods(good)} does {name} buy?")
        g.given(f"p{i}", rng.randint(2, 25), f"the price of a {good}", fact=f"A {good} costs ${{v}}.",
                ask=f"How much does one {good} cost?", unit="money")
        g.derive(f"c{i}", f"{{n{i}}}*{{p{i}}}", f"the cost of the {_goods(good)}",
                 step=f"The {_goods(good)} cost {{calc}} dollars.", unit="money")
    g.derive("total", "{c0}+{c1}+{c2}", "the total", step="In total that is {calc} dollars.",
             fact=f"{name} spends ${{v}} in total.", ask=f"How much does {name} spend in total?", unit="money")
    return "total"


def savings(g: Graph, rng: random.Random):
    name, good = g.subject, rng.choice(["bike", "tablet", "guitar", "tent", "telescope"])
    weekly, weeks, have = rng.randint(5, 30), rng.randint(3, 12), rng.randint(5, 60)
    g.given("price", weekly * weeks + have, f"the price of the {good}", fact=f"A {good} costs ${{v}}.",
            ask=f"How much does the {good} cost?", unit="money")
    g.given("have", have, f"the money {name} has saved", fact=f"{name} has already saved ${{v}}.",
            ask=f"How much had {name} already saved?", unit="money")
    g.given("weekly", weekly, "the weekly savings", fact=f"{name} saves ${{v}} every week.",
            ask=f"How much does {name} save each week?", unit="money")
    g.derive("need", "{price}-{have}", "the money still needed", step=f"{name} still needs {{calc}} dollars.",
             ask=f"How much more money does {name} need?", unit="money")
    g.derive("weeks", "{need}/{weekly}", "the number of weeks", step="That takes {calc} weeks.",
             fact=f"It takes {name} {{v}} weeks to save enough.", ask=f"How many weeks will it take {name} to afford the {good}?",
             unit="weeks")
    return "weeks"


def recipe(g: Graph, rng: random.Random):
    name = g.subject
    ingredient = rng.choice(["cups of flour", "eggs", "spoons of sugar", "cups of milk"])
    per, base = rng.randint(2, 6), rng.choice([2, 3, 4, 6])
    g.given("amount", per * base, f"the {ingredient} in the recipe",
            fact=f"A recipe uses {{v}} {ingredient}.", ask=f"How many {ingredient} does the recipe use?")
    g.given("serves", base, "the servings of the recipe", fact="The recipe makes {v} servings.",
            ask="How many servings does the recipe make?")
    g.given("want", base * rng.randint(2, 5), f"the servings {name} wants",
            fact=f"{name} wants to make {{v}} servings.", ask=f"How many servings does {name} make?")
    g.derive("per", "{amount}/{serves}", f"the {ingredient} per serving",
             step=f"One serving needs {{calc}} {ingredient}.", ask=f"How many {ingredient} does one serving need?")
    g.derive("need", "{per}*{want}", f"the {ingredient} needed", step=f"{name} needs {{calc}} {ingredient}.",
             fact=f"{name} uses {{v}} {ingredient}.", ask=f"How many {ingredient} does {name} need?",
             noun=ingredient)
    return "need"


def profit(g: Graph, rng: random.Random):
    name = g.subject
    one, many = rng.choice([("lemonade cup", "lemonade cups"), ("bracelet", "bracelets"), ("pie", "pies"),
                            ("candle", "candles")])
    g.given("n", rng.randint(10, 60), f"the number of {many}", fact=f"{name} makes {{v}} {many}.",
            ask=f"How many {many} does {name} make?")
    g.given("cost", rng.randint(1, 5), f"the cost to make one {one}", fact=f"Each {one} costs ${{v}} to make.",
            ask=f"How much does one {one} cost to make?", unit="money")
    g.given("sell", rng.randint(6, 12), f"the selling price of one {one}",
            fact=f"{name} sells every one of them for ${{v}} each.", ask=f"What is the price of one {one}?", unit="money")
    g.derive("income", "{n}*{sell}", "the money from sales", step="The sales bring in {calc} dollars.",
             ask="How much money do the sales bring in?", unit="money")
    g.derive("spent", "{n}*{cost}", "the cost of making them", step="Making them costs {calc} dollars.", unit="money")
    g.derive("profit", "{income}-{spent}", "the profit", step="The profit is {calc} dollars.",
             fact=f"{name}'s profit is ${{v}}.", ask=f"How much profit does {name} make?", unit="money")
    return "profit"


def bill_split(g: Graph, rng: random.Random):
    name = g.subject
    g.const("hundred", 100)
    people = rng.randint(2, 6)
    g.given("meal", people * rng.randint(4, 20) * 4, "the cost of the meal",
            fact=f"{name} and friends have dinner that costs ${{v}}.", ask="How much did the meal cost?", unit="money")
    g.given("tip", rng.choice([10, 15, 20, 25]), "the tip percentage", fact="They leave a {v}% tip.",
            ask="What percentage tip do they leave?", unit="percent")
    g.given("people", people, "the number of people", fact="The bill is split evenly among {v} people.",
            ask="Among how many people is the bill split?")
    g.derive("tip_amt", "{meal}*{tip}/{hundred}", "the tip", step="The tip is {calc} dollars.", unit="money")
    g.derive("bill", "{meal}+{tip_amt}", "the whole bill", step="The whole bill is {calc} dollars.",
             ask="How much is the whole bill including the tip?", unit="money")
    g.derive("share", "{bill}/{people}", "each person's share", step="Each person pays {calc} dollars.",
             fact="Each person pays ${v}.", ask="How much does each person pay?", unit="money")
    return "share"


def growth(g: Graph, rng: random.Random):
    name = g.subject
    thing = rng.choice(["sunflower", "bean plant", "tomato plant"])
    g.given("start", rng.randint(5, 40), f"the starting height of the {thing}",
            fact=f"{name}'s {thing} is {{v}} centimeters tall.", ask=f"How tall was the {thing} at first, in centimeters?",
            unit="cm")
    g.given("rate", rng.randint(2, 9), "the weekly growth", fact="It grows {v} centimeters every week.",
            ask=f"How many centimeters does the {thing} grow each week?", unit="cm")
    g.given("weeks", rng.randint(2, 10), "the number of weeks", fact="Consider the next {v} weeks.",
            ask="Over how many weeks does it grow?", unit="weeks")
    g.derive("gain", "{rate}*{weeks}", "the growth", step="It grows {calc} centimeters.",
             ask=f"How many centimeters does the {thing} grow in that time?", unit="cm")
    g.derive("end", "{start}+{gain}", "the final height", step="Its height becomes {calc} centimeters.",
             fact="At the end it is {v} centimeters tall.", ask=f"How tall is the {thing} at the end, in centimeters?",
             unit="cm")
    return "end"


def fuel(g: Graph, rng: random.Random):
    name = g.subject
    mpg = rng.choice([20, 25, 30, 35, 40])
    g.given("miles", mpg * rng.randint(2, 12), "the trip length", fact=f"{name} drives {{v}} miles.",
            ask=f"How many miles does {name} drive?", unit="miles")
    g.given("mpg", mpg, "the miles per gallon", fact="The car goes {v} miles on a gallon of gas.",
            ask="How many miles does the car go per gallon?", unit="mpg")
    g.given("price", rng.randint(3, 5), "the price of a gallon", fact="Gas costs ${v} a gallon.",
            ask="How much does a gallon of gas cost?", unit="money")
    g.derive("gallons", "{miles}/{mpg}", "the gas used", step="The trip uses {calc} gallons.",
             ask="How many gallons of gas does the trip use?", unit="gallons")
    g.derive("cost", "{gallons}*{price}", "the gas cost", step="The gas costs {calc} dollars.",
             fact="The gas costs ${v}.", ask=f"How much does {name} spend on gas?", unit="money")
    return "cost"


def remainder_share(g: Graph, rng: random.Random):
    name = g.subject
    one, many = rng.choice(ITEMS)
    kids, each = rng.randint(2, 8), rng.randint(2, 9)
    keep = rng.randint(1, 10)
    g.given("total", kids * each + keep, f"the number of {many}", fact=f"{name} has {{v}} {many}.",
            ask=f"How many {many} did {name} have?")
    g.given("keep", keep, f"the {many} {name} keeps", fact=f"{name} keeps {{v}} of them for later.",
            ask=f"How many {many} does {name} keep?")
    g.given("kids", kids, "the number of friends", fact=f"{name} shares the rest equally among {{v}} friends.",
            ask="Among how many friends are they shared?")
    g.derive("shared", "{total}-{keep}", f"the {many} shared", step=f"{name} shares {{calc}} {many}.",
             ask=f"How many {many} does {name} share?", noun=many)
    g.derive("each", "{shared}/{kids}", "each friend's share", step=f"Each friend gets {{calc}} {many}.",
             fact=f"Each friend gets {{v}} {many}.", ask=f"How many {many} does each friend get?", noun=many)
    return "each"


FAMILIES: dict[str, Callable[[Graph, random.Random], str]] = {
    f.__name__: f
    for f in (unit_rate, discount, fraction_of, ages, change, speed, fence, area_tiles, average,
              wages, comparison, grouping, ratio, schedule, percent_increase, work_rate, shopping,
              savings, recipe, profit, bill_split, growth, fuel, remainder_share)
}


def build(family: str, seed: int, max_tries: int = 200) -> Graph:
    """The graph of problem (family, seed): the same pair always gives the same problem, so a
    record's provenance (family, seed, agent path) is enough to rebuild it."""
    rng = random.Random(f"{family}/{seed}")
    for _ in range(max_tries):
        g = Graph(family=family, subject=rng.choice(NAMES))
        try:
            g.target = FAMILIES[family](g, rng)
            g.render()
        except Reject:
            continue
        return g
    raise RuntimeError(f"family {family!r} rejected {max_tries} draws in a row")
