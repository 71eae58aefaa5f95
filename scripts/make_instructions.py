#!/usr/bin/env python3
"""Writes data/causal-lm/{train,dev}.jsonl: short instruction/response pairs written for
ttlora's causal-LM tests and quick start. Every response follows one house style
("Answer: <fact>.") so a short fine-tune visibly changes what a model generates. The facts
are common knowledge (capitals, opposites, plurals, colours, sums); nothing is copied from a
dataset. Deterministic: rerunning gives the same files."""
import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Greece", "Athens"), ("Turkey", "Ankara"),
    ("Russia", "Moscow"), ("Ireland", "Dublin"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("South Korea", "Seoul"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Cuba", "Havana"), ("Hungary", "Budapest"), ("Czechia", "Prague"),
    ("Switzerland", "Bern"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("high", "low"),
    ("strong", "weak"), ("rich", "poor"), ("young", "old"), ("wet", "dry"), ("loud", "quiet"),
    ("thick", "thin"), ("near", "far"), ("clean", "dirty"), ("long", "short"), ("up", "down"),
    ("inside", "outside"), ("first", "last"), ("cheap", "expensive"), ("heavy", "light"),
    ("true", "false"), ("win", "lose"), ("push", "pull"), ("buy", "sell"), ("day", "night"),
    ("north", "south"),
]
PLURALS = [
    ("cat", "cats"), ("dog", "dogs"), ("child", "children"), ("mouse", "mice"), ("box", "boxes"),
    ("city", "cities"), ("knife", "knives"), ("tooth", "teeth"), ("foot", "feet"),
    ("woman", "women"), ("man", "men"), ("leaf", "leaves"), ("bus", "buses"), ("baby", "babies"),
    ("story", "stories"), ("goose", "geese"), ("person", "people"), ("wolf", "wolves"),
    ("potato", "potatoes"), ("church", "churches"), ("fox", "foxes"), ("day", "days"),
    ("sheep", "sheep"), ("fish", "fish"), ("book", "books"),
]
COLOURS = [
    ("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
    ("a ripe banana", "yellow"), ("a ripe tomato", "red"), ("an orange", "orange"),
    ("a carrot", "orange"), ("milk", "white"), ("a lemon", "yellow"), ("blood", "red"),
    ("a strawberry", "red"), ("chocolate", "brown"), ("an emerald", "green"),
    ("a sapphire", "blue"), ("the night sky", "black"), ("a lime", "green"),
    ("ivory", "white"), ("a pumpkin", "orange"), ("a ruby", "red"),
]


def rows(rng):
    out = []
    for country, city in CAPITALS:
        q = rng.choice(["What is the capital of {}?", "Name the capital city of {}.",
                        "Which city is the capital of {}?"]).format(country)
        out.append((q, f"Answer: {city}."))
    for word, opp in OPPOSITES:
        q = rng.choice(["What is the opposite of \"{}\"?", "Give the antonym of \"{}\".",
                        "Which word means the opposite of \"{}\"?"]).format(word)
        out.append((q, f"Answer: {opp}."))
    for word, plural in PLURALS:
        q = rng.choice(["What is the plural of \"{}\"?", "Write the plural form of \"{}\".",
                        "How do you say more than one \"{}\"?"]).format(word)
        out.append((q, f"Answer: {plural}."))
    for thing, colour in COLOURS:
        q = rng.choice(["What colour is {}?", "Which colour is {} usually?",
                        "Tell me the colour of {}."]).format(thing)
        out.append((q, f"Answer: {colour}."))
    for _ in range(85):
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        q = rng.choice(["What is {} plus {}?", "Add {} and {}.", "Compute {} + {}."]).format(a, b)
        out.append((q, f"Answer: {a + b}."))
    rng.shuffle(out)
    return out


def main():
    rng = random.Random(20261206)
    pairs = rows(rng)
    root = Path(__file__).resolve().parent.parent / "data" / "causal-lm"
    root.mkdir(parents=True, exist_ok=True)
    dev, train = pairs[:40], pairs[40:]
    for name, part in (("train", train), ("dev", dev)):
        with open(root / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for q, a in part:
                f.write(json.dumps({"prompt": f"Question: {q}\n", "completion": a}) + "\n")
    # A few chat rows, for the chat-template path.
    with open(root / "chat.jsonl", "w", encoding="utf-8") as f:
        for q, a in train[:24]:
            f.write(json.dumps({"messages": [
                {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    print(f"{len(train)} train, {len(dev)} dev rows in {root}")


if __name__ == "__main__":
    main()
