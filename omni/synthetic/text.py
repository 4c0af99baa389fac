"""The demo text corpus for Stage A (tokenizer + Thinker): template-generated English, offline and deterministic.

Why templates: the CPU demo must reach validation perplexity <= 10 within a few minutes, so the text has to be
learnable (repeated sentence frames, several hundred words) yet not trivial: eight genres (stories, picture scenes,
daily routines, numbers, calendar, animals and colours, question/answer pairs, instructions), many slot fillers,
facts that stay the same across documents (a cow says moo, bananas are yellow, two plus three is five) so a model
can learn them, and stories that refer back to their own characters and objects so that context helps.

Format: one paragraph per document, documents separated by a blank line. The validation documents come from the
same distribution; they are drawn first from the seeded stream (so they depend only on `seed` and `n_val_docs`)
and the training documents exclude them, so no validation document appears verbatim in train.

Suggested demo size: n_train_docs=20000, n_val_docs=500 (about 3.4 MB of train text, generated in under a second).
With about 840 distinct words, SentencePiece can make at most about 1080 unigram or 3400 bpe pieces from it
(special tokens and 256 byte pieces included); train_tokenizer names the limit when vocab_size exceeds it.
The word lists below (colours, shapes, positions, sizes, numbers, days) are shared with later stages' synthetic data.
"""

from __future__ import annotations

import random
from pathlib import Path

from omni.atomic import atomic_write_text

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "centre")
SIZES = ("small", "large")
NUMBER_WORDS = tuple(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()
)
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = tuple(
    "January February March April May June July August September October November December".split()
)

# (name, subject pronoun, object pronoun, possessive) so that stories stay grammatical and consistent.
PEOPLE = tuple((n, "she", "her", "her") for n in "Anna Clara Emma Grace Ivy Kate Mia Olivia Rosa Tara Zoe Lily "
               "Nora Ruby Ella Maya Alice Hannah Julia Lucy Sara Amber Chloe Daisy Eva Fiona Holly Iris Jane Laura "
               "Molly Nina Paula Rita Sophie Stella Vera Wanda Yara Zara".split()) + tuple(
    (n, "he", "him", "his") for n in "Ben David Finn Harry Jack Leo Noah Paul Sam Tom Max Oscar Hugo Adam Omar "
    "Theo Alex Charlie Daniel Felix George Henry Isaac Jacob Luke Mark Peter Simon Arthur Bruno Carl Dylan "
    "Edgar Frank Ivan Joel Kevin Lewis Martin Nathan Owen Ralph".split())
PLACES = tuple("park garden beach forest market library school kitchen river farm village museum station zoo "
               "bakery hill lake playground shop castle harbour meadow bridge cafe island mountain orchard pond "
               "square theatre tower valley barn cave field garage lighthouse windmill airport canal cottage desert "
               "factory fountain gate hospital jungle pier pool stable temple tunnel".split())
OBJECTS = tuple("ball kite book hat cup box apple key shoe bag lamp boat drum bell ribbon umbrella pencil basket "
                "flower coat chair spoon letter map clock blanket candle feather shell stone bottle brush button "
                "coin comb crayon doll fork glove jar jacket kettle ladder mirror necklace pillow plate puzzle ring "
                "robot rope scarf sock teapot ticket toy train trumpet wagon whistle anchor badge balloon bucket "
                "camera card compass cushion flag guitar hammer helmet jug lantern marble medal mug needle parcel "
                "piano rocket saucer shovel sticker sweater tent towel trophy vase violin wallet".split())
QUALITIES = ("old", "new", "shiny", "soft", "heavy", "tiny", "pretty", "strange", "wooden", "dusty", "little", "big",
             "bright", "dark", "funny", "lovely", "plain", "round", "striped", "spotted")
CONTAINERS = ("box", "basket", "bag", "drawer", "cupboard", "pocket")
FEELINGS = ("happy", "sad", "tired", "excited", "surprised", "proud", "hungry", "calm", "sleepy", "brave", "curious",
            "cheerful", "glad", "thirsty", "lonely", "busy")
FOODS = ("bread", "soup", "cake", "rice", "cheese", "apples", "pasta", "biscuits", "eggs", "porridge", "pancakes",
         "salad", "noodles", "pie", "sandwiches", "cherries",
         "toast", "beans", "carrots", "grapes", "muffins", "yoghurt", "potatoes", "peas")
WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "cloudy", "snowy", "foggy")
# animal: (legs, sound or None, where it lives, what it eats, size); fixed so the facts are learnable.
ANIMALS = {
    "cat": ("four", "meow", "in a house", "fish", "small"),
    "dog": ("four", "woof", "in a house", "bones", "small"),
    "cow": ("four", "moo", "on a farm", "grass", "large"),
    "horse": ("four", "neigh", "in a stable", "hay", "large"),
    "sheep": ("four", "baa", "in a field", "grass", "large"),
    "pig": ("four", "oink", "on a farm", "apples", "large"),
    "duck": ("two", "quack", "on a pond", "bread", "small"),
    "hen": ("two", "cluck", "on a farm", "seeds", "small"),
    "owl": ("two", "hoot", "in a tree", "mice", "small"),
    "frog": ("four", "croak", "in a pond", "flies", "small"),
    "lion": ("four", "roar", "on the grassland", "meat", "large"),
    "bee": ("six", "buzz", "in a hive", "nectar", "small"),
    "spider": ("eight", None, "in a web", "flies", "small"),
    "mouse": ("four", "squeak", "in a hole", "cheese", "small"),
    "elephant": ("four", None, "on the grassland", "leaves", "large"),
    "bird": ("two", "tweet", "in a nest", "seeds", "small"),
    "goat": ("four", "maa", "on a hill", "grass", "large"),
    "rabbit": ("four", None, "in a burrow", "carrots", "small"),
    "fox": ("four", None, "in a den", "berries", "small"),
    "bear": ("four", "growl", "in a cave", "honey", "large"),
    "monkey": ("two", "chatter", "in the jungle", "bananas", "small"),
    "donkey": ("four", "hee haw", "on a farm", "hay", "large"),
    "goose": ("two", "honk", "by the river", "grass", "small"),
    "snake": ("no", "hiss", "in the grass", "eggs", "small"),
}
THING_COLOURS = {
    "a banana": "yellow", "grass": "green", "the sky": "blue", "snow": "white", "coal": "black",
    "a strawberry": "red", "a carrot": "orange", "a grape": "purple", "a lemon": "yellow", "a tomato": "red",
    "a leaf": "green", "milk": "white", "the sea": "blue", "a plum": "purple", "an orange": "orange",
    "the night sky": "black", "a cherry": "red", "a pumpkin": "orange", "a frog": "green", "a cloud": "white",
    "a crow": "black", "the sun": "yellow", "a violet": "purple", "a fire engine": "red", "a lime": "green",
    "a blueberry": "blue", "sand": "yellow", "a panda": "black and white",
}
TASKS = {
    "make a cup of tea": ["boil some water", "put a tea bag in a cup", "pour the hot water into the cup",
                          "wait for three minutes", "take out the tea bag"],
    "plant a seed": ["fill a pot with soil", "make a small hole", "put the seed in the hole",
                     "cover it with soil", "give it some water"],
    "wash your hands": ["turn on the tap", "wet your hands", "use some soap", "rub your hands together",
                        "rinse them with water", "dry them with a towel"],
    "make a sandwich": ["take two slices of bread", "spread some butter on them", "add cheese and tomato",
                        "put the slices together", "cut the sandwich in half"],
    "draw a house": ["draw a large square", "draw a triangle on top for the roof", "add a door in the middle",
                     "draw two small windows", "colour the roof red"],
    "pack a school bag": ["put your books in the bag", "add a pencil and a ruler", "pack your lunch",
                          "put in a bottle of water", "close the bag"],
    "brush your teeth": ["wet the toothbrush", "put on some toothpaste", "brush every tooth gently",
                         "spit out the toothpaste", "rinse your mouth with water"],
    "make a paper boat": ["take a sheet of paper", "fold it in half", "fold the corners down",
                          "fold up the bottom edges", "open the middle and press it flat"],
    "feed a cat": ["find the cat bowl", "wash the bowl", "fill it with cat food", "put fresh water next to it",
                   "call the cat"],
    "set the table": ["put a cloth on the table", "place a plate for each person", "put a fork on the left",
                      "put a knife and a spoon on the right", "add a glass of water"],
}
STEP_WORDS = ("First", "Then", "Next", "After that")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _a(phrase: str) -> str:
    """The phrase with its indefinite article: "an orange star", "a red star"."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _plural(noun: str, n: int) -> str:
    if n == 1:
        return noun
    return noun + "es" if noun.endswith(("s", "x", "ch", "sh")) else noun + "s"


def _num(rng: random.Random, n: int) -> str:
    """Mostly number words, sometimes digits, so the model links both spellings."""
    return str(n) if rng.random() < 0.25 else NUMBER_WORDS[n]


def _story(rng: random.Random) -> str:
    (a, he, him, his), (b, _, _, _) = rng.sample(PEOPLE, 2)
    place, place2 = rng.sample(PLACES, 2)
    obj, colour, quality = rng.choice(OBJECTS), rng.choice(COLOURS), rng.choice(QUALITIES + SIZES)
    day, feeling, animal = rng.choice(DAYS), rng.choice(FEELINGS), rng.choice(list(ANIMALS))
    opening = rng.choice([
        f"One day, {a} went to the {place}.",
        f"On {day} morning, {a} walked to the {place}.",
        f"{a} lived in a small house near the {place}.",
        f"Every {day}, {a} and {b} visited the {place}.",
        f"It was a {rng.choice(WEATHER)} day, and {a} was at the {place}.",
    ])
    find = rng.choice([
        f"There {he} found {_a(f'{quality} {colour} {obj}')}.",
        f"{_cap(he)} saw {_a(f'{quality} {colour} {obj}')} under a tree.",
        f"{a} bought {_a(f'{quality} {colour} {obj}')} for {_num(rng, rng.randint(2, 9))} coins.",
        f"On the way, {a} found {_a(f'{colour} {obj}')} next to the {place2}.",
    ])
    events = rng.sample([
        f"{a} gave the {colour} {obj} to {b}.",
        f'{b} said, "What a nice {obj}!"',
        f"They took the {obj} to the {place2}.",
        f"{a} put the {obj} in {his} {rng.choice(CONTAINERS)}.",
        f"Then {_a(animal)} came and looked at the {obj}.",
        f"{a} and {b} played with the {obj} for {NUMBER_WORDS[rng.randint(2, 5)]} hours.",
        f"Later, {a} lost the {obj}, but {b} helped {him} find it.",
        f"{a} showed the {colour} {obj} to {b}.",
        f"At lunch, {a} ate some {rng.choice(FOODS)}.",
        f"The weather was {rng.choice(WEATHER)}, so {a} stayed at the {place} until evening.",
    ], rng.randint(1, 3))
    ending = rng.choice([
        f"Then {a} went home.",
        f"At the end of the day, {a} was very {feeling}.",
        f"{a} and {b} became good friends.",
        f"That night, {a} dreamed about the {colour} {obj}.",
        "The end.",
    ])
    return " ".join([opening, find, *events, ending])


def _routine(rng: random.Random) -> str:
    (a, he, _, his), (b, _, _, _) = rng.sample(PEOPLE, 2)
    food, food2 = rng.sample(FOODS, 2)
    middle = rng.sample([
        f"Then {he} goes to the {rng.choice(PLACES)}.",
        f"After breakfast, {he} walks to the {rng.choice(PLACES)} with {b}.",
        f"The weather is {rng.choice(WEATHER)} today.",
        f"In the afternoon, {he} plays with {his} {rng.choice(OBJECTS)}.",
        f"In the afternoon, {he} draws {_a(rng.choice(COLOURS))} {rng.choice(SHAPES)}.",
        f"At {_num(rng, rng.randint(1, 5))} o'clock, {he} helps {b} in the {rng.choice(PLACES)}.",
    ], rng.randint(1, 3))
    return " ".join([
        f"{a} wakes up at {_num(rng, rng.randint(5, 9))} o'clock.",
        f"For breakfast, {he} eats {food}.",
        *middle,
        f"For dinner, {he} has {food2}.",
        f"{a} goes to bed at {_num(rng, rng.randint(7, 10))} o'clock.",
    ])


def _scene(rng: random.Random) -> str:
    n = rng.randint(1, 4)
    # Distinct (colour, shape) pairs and positions, so questions about one shape have one answer.
    kinds = rng.sample([(c, s) for c in COLOURS for s in SHAPES], n)
    shapes = [(rng.choice(SIZES), c, s, p) for (c, s), p in zip(kinds, rng.sample(POSITIONS, n))]
    count = f"{'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {_plural('shape', n)}"
    out = [rng.choice([f"The picture shows {NUMBER_WORDS[n]} {_plural('shape', n)}.",
                       f"There {count} in the picture.", "Look at this picture."])]
    for size, colour, shape, pos in shapes:
        out.append(rng.choice([
            f"The {size} {colour} {shape} is in the {pos}.",
            f"In the {pos} there is a {size} {colour} {shape}.",
            f"{_cap(_a(colour))} {shape} is in the {pos}. It is {size}.",
        ]))
    size, colour, shape, pos = rng.choice(shapes)
    out.append(rng.choice([
        f"Where is the {colour} {shape}? It is in the {pos}.",
        f"What colour is the {shape} in the {pos}? It is {colour}.",
        f"How many shapes are there? There {count}.",
        f"Is the {colour} {shape} small or large? It is {size}.",
        "",
    ]))
    return " ".join(s for s in out if s)


def _numbers(rng: random.Random) -> str:
    (a_name, _, him, _), (b_name, _, _, _) = rng.sample(PEOPLE, 2)
    a, b = rng.randint(1, 10), rng.randint(1, 10)
    lo, hi = min(a, b), max(a, b)
    obj = rng.choice(OBJECTS)
    start = rng.randint(0, 14)
    seq = ", ".join(NUMBER_WORDS[start:start + rng.randint(3, 6)])
    pool = [
        f"Let us count: {seq}.",
        f"{_cap(NUMBER_WORDS[a])} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.",
        f"{a} + {b} = {a + b}.",
        f"{_cap(NUMBER_WORDS[hi])} minus {NUMBER_WORDS[lo]} is {NUMBER_WORDS[hi - lo]}.",
        f"{a_name} has {_num(rng, a)} {_plural(obj, a)}. {b_name} gives {him} {_num(rng, b)} more. "
        f"Now {a_name} has {_num(rng, a + b)} {_plural(obj, a + b)}.",
        f"After {NUMBER_WORDS[a]} comes {NUMBER_WORDS[a + 1]}.",
        f"The number before {NUMBER_WORDS[a]} is {NUMBER_WORDS[a - 1]}.",
        f"The digit {a - 1} is written {NUMBER_WORDS[a - 1]}.",
    ]
    if a != b:
        pool.append(f"{_cap(NUMBER_WORDS[hi])} is more than {NUMBER_WORDS[lo]}, and {lo} is less than {hi}.")
    return " ".join(rng.sample(pool, rng.randint(2, 4)))


def _calendar(rng: random.Random) -> str:
    i, m = rng.randrange(7), rng.randrange(12)
    day, nxt, prev = DAYS[i], DAYS[(i + 1) % 7], DAYS[i - 1]
    name = rng.choice(PEOPLE)[0]
    pool = [
        f"Today is {day}. Tomorrow will be {nxt}. Yesterday was {prev}.",
        f"The day after {day} is {nxt}.",
        "There are seven days in a week.",
        f"{name} goes to the {rng.choice(PLACES)} every {day}.",
        f"{MONTHS[m]} comes after {MONTHS[m - 1]}.",
        "There are twelve months in a year.",
        f"{name}'s birthday is in {MONTHS[m]}.",
        "The weekend is Saturday and Sunday.",
    ]
    return " ".join(rng.sample(pool, rng.randint(2, 4)))


def _nature(rng: random.Random) -> str:
    if rng.random() < 0.3:
        things = rng.sample(list(THING_COLOURS), rng.randint(2, 4))
        return " ".join(f"{_cap(t)} is {THING_COLOURS[t]}." for t in things)
    animal = rng.choice(list(ANIMALS))
    legs, sound, home, food, size = ANIMALS[animal]
    facts = [f"It has {legs} legs.", f"It lives {home}.", f"It likes to eat {food}."]
    if sound:
        facts.append(f"{_cap(_a(animal))} says {sound}.")
    return " ".join([f"The {animal} is a {size} animal.", *rng.sample(facts, rng.randint(2, len(facts)))])


def _qa_pair(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(6)
    if kind == 0:
        thing = rng.choice(list(THING_COLOURS))
        return f"What colour is {thing}?", f"{_cap(thing)} is {THING_COLOURS[thing]}."
    if kind in (1, 2):
        animal = rng.choice([a for a, facts in ANIMALS.items() if kind == 1 or facts[1]])
        legs, sound, home, _, _ = ANIMALS[animal]
        an_animal = _a(animal)
        if kind == 2:
            return f"What does {an_animal} say?", f"{_cap(an_animal)} says {sound}."
        return rng.choice([(f"How many legs does {an_animal} have?", f"{_cap(an_animal)} has {legs} legs."),
                           (f"Where does {an_animal} live?", f"It lives {home}.")])
    if kind == 3:
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        return f"What is {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}?", f"{_cap(NUMBER_WORDS[a + b])}."
    if kind == 4:
        i = rng.randrange(7)
        return f"What day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % 7]}."
    colour, shape, pos = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(POSITIONS)
    return f"The {colour} {shape} is in the {pos}. Where is the {colour} {shape}?", f"In the {pos}."


def _questions(rng: random.Random) -> str:
    pairs = [_qa_pair(rng) for _ in range(rng.randint(2, 3))]
    if rng.random() < 0.5:
        return " ".join(f"Question: {q} Answer: {a}" for q, a in pairs)
    # The chat template's role names (system, user, assistant) appear here so they become single pieces.
    intro = "The system tells the assistant to answer the user. " if rng.random() < 0.3 else ""
    return intro + " ".join(f"The user asks: {q} The assistant says: {a}" for q, a in pairs)


def _instructions(rng: random.Random) -> str:
    if rng.random() < 0.5:
        task = rng.choice(list(TASKS))
        steps = TASKS[task]
        intro = rng.choice([f"How to {task}.", f"To {task}, follow these steps.", f"Here is how to {task}."])
        words = [STEP_WORDS[min(i, len(STEP_WORDS) - 1)] for i in range(len(steps) - 1)] + ["Finally"]
        return " ".join([intro, *(f"{w}, {s}." for w, s in zip(words, steps))])
    n = rng.randint(2, 4)
    out = []
    for i, pos in enumerate(rng.sample(POSITIONS, n)):
        verb = "Draw" if i == 0 else rng.choice(["Then draw", "Next, draw", "Now draw"])
        out.append(f"{verb} a {rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)} in the {pos}.")
    out.append(rng.choice(["", "Now the picture is finished.", f"You have drawn {NUMBER_WORDS[n]} shapes."]))
    return " ".join(s for s in out if s)


# Genre weights: stories and scenes carry most of the vocabulary; the rest add facts and formats.
_GENRES = ((_story, 3), (_scene, 2), (_routine, 1), (_numbers, 1), (_calendar, 1), (_nature, 1), (_questions, 2),
           (_instructions, 1))


def make_document(rng: random.Random) -> str:
    """One paragraph from a randomly chosen genre."""
    (genre,) = rng.choices([g for g, _ in _GENRES], weights=[w for _, w in _GENRES])
    return genre(rng)


def _stats(path: Path, docs: list[str]) -> dict:
    return {"path": str(path), "docs": len(docs), "chars": sum(map(len, docs)),
            "words": sum(len(d.split()) for d in docs)}


def write_text_corpus(out_dir: str | Path, *, seed: int = 0, n_train_docs: int, n_val_docs: int) -> dict:
    """Write `out_dir/train.txt` and `out_dir/val.txt`; return {"train": stats, "val": stats, "seed": seed}.

    Stats per split: path, docs, chars (document text, separators excluded) and words (whitespace-split).
    Deterministic for a seed. Suggested demo size: n_train_docs=20000, n_val_docs=500.
    """
    if n_train_docs < 1 or n_val_docs < 1:
        raise ValueError(f"write_text_corpus: n_train_docs={n_train_docs} and n_val_docs={n_val_docs} must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    val = [make_document(rng) for _ in range(n_val_docs)]
    val_set = set(val)
    train = []
    while len(train) < n_train_docs:
        doc = make_document(rng)
        if doc not in val_set:  # a redraw, so no validation document is seen verbatim in training
            train.append(doc)
    stats = {"seed": seed}
    for split, docs in (("train", train), ("val", val)):
        path = out_dir / f"{split}.txt"
        atomic_write_text(path, "\n\n".join(docs) + "\n")
        stats[split] = _stats(path, docs)
    return stats
