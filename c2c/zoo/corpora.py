"""Texts the bundled pair is trained on and the questions it is evaluated on, cut into splits.

The split mirrors the paper's setting in miniature:

- the sharer reads paraphrased fact statements about the fuser and evaluation people (more facts
  than the receiver ever reads) and never a question;
- the receiver is smaller, reads statements and question/answer drills about the receiver people
  only, so it knows the formats but not most of the facts; it also learns to read notes in its
  prompt (the text-to-text baseline's format) from drills about the context people, whose facts it
  only ever sees inside such notes, so T2T is a fair baseline and not a format it never met;
- the fuser trains on questions about the fuser people, asked with the fuser question templates;
- the evaluation asks multiple-choice questions about the evaluation people, with the evaluation
  templates: people and templates the fuser never saw, facts the receiver never saw.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from c2c.zoo.world import ATTRIBUTES, Person, World, build_world
from receiver_service.pipeline import TEXT_HINT_TEMPLATE

LETTERS = "ABCD"

# In every template a name is followed by a space, never by punctuation: the sharer's
# SentencePiece-style tokenizer glues punctuation to a word, and a name must read the same
# everywhere for a model to recognise its owner.
STATEMENT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "town": (
        "{name} lives in {value}.",
        "{name} has a home in {value}.",
        "{value} is where {name} lives.",
        "{name} has a house in {value}.",
        "The town {name} calls home is {value}.",
        "{name} grew up in {value} and still lives there.",
    ),
    "trade": (
        "{name} works as a {value}.",
        "{name} is a {value} by trade.",
        "By trade, {name} is a {value}.",
        "{name} earns a living as a {value}.",
        "The trade {name} follows is {value}.",
        "Everyone knows {name} as the local {value}.",
    ),
    "pet": (
        "{name} keeps a {value} as a pet.",
        "{name} has a pet {value}.",
        "The pet {name} keeps is a {value}.",
        "At home, {name} looks after a {value}.",
        "{name} owns a pet {value}.",
        "A {value} lives with {name} as a pet.",
    ),
    "instrument": (
        "{name} plays the {value}.",
        "{name} is a player of the {value}.",
        "The instrument {name} plays is the {value}.",
        "In the evenings {name} practises the {value}.",
        "{name} is known for playing the {value}.",
        "Music from the {value} is what {name} makes.",
    ),
}

# Questions are fill-in-the-blank statements: a statement whose value, last, is a blank, so a
# model that knows the fact has the answer in mind at the blank, as a reader would. Per
# attribute, two disjoint groups: the fuser trains on the first, the evaluation asks with the
# second. The receiver drills on both (about other people).
FUSER_QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "town": ("{name} lives in ___.", "{name} has a home in ___."),
    "trade": ("{name} works as a ___.", "By trade, {name} is a ___."),
    "pet": ("{name} has a pet ___.", "The pet {name} keeps is a ___."),
    "instrument": ("{name} plays the ___.", "{name} is a player of the ___."),
}
EVAL_QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "town": ("{name} has a house in ___.", "The town {name} calls home is ___."),
    "trade": ("{name} earns a living as a ___.", "The trade {name} follows is ___."),
    "pet": ("At home, {name} looks after a ___.", "{name} owns a pet ___."),
    "instrument": (
        "The instrument {name} plays is the ___.",
        "{name} is known for playing the ___.",
    ),
}


@dataclass(frozen=True)
class MultipleChoiceQuestion:
    """An MMLU-style question: four choices, ``answer`` is the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""
    attribute: str = ""

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass(frozen=True)
class PromptResponse:
    """One fuser-training example: the receiver should say ``response`` after ``prompt``."""

    prompt: str
    response: str


@dataclass(frozen=True)
class SplitSizes:
    """How many people each split holds and how much text each model reads."""

    receiver_people: int = 200
    context_people: int = 100
    fuser_people: int = 250
    eval_people: int = 250
    sharer_bios_per_person: int = 40
    receiver_bios_per_person: int = 16
    receiver_drills_per_fact: int = 8
    context_drills_per_fact: int = 2
    fuser_examples_per_fact: int = 6


@dataclass(frozen=True)
class ZooSplits:
    """Everything the zoo trains and evaluates on, generated from one seed."""

    world: World
    receiver_people: tuple[Person, ...]
    context_people: tuple[Person, ...]
    fuser_people: tuple[Person, ...]
    eval_people: tuple[Person, ...]
    sharer_texts: tuple[str, ...]
    receiver_texts: tuple[str, ...]
    fuser_examples: tuple[PromptResponse, ...]
    eval_questions: tuple[MultipleChoiceQuestion, ...]


def render_prompt(question: MultipleChoiceQuestion) -> str:
    """The multiple-choice prompt the receiver was drilled on; it answers with the choice's text.
    The question opens the prompt, where statements open the sharer's texts, so a sharer that
    knows the fact recalls it at the blank."""
    options = "".join(f"{LETTERS[i]}. {choice}\n" for i, choice in enumerate(question.choices))
    return f"{question.question}\n{options}Answer:"


def render_answer(question: MultipleChoiceQuestion) -> str:
    """The receiver names the right choice. (A letter answer would make a tiny model learn a
    lookup-then-map-to-letter composition it does not manage in minutes of CPU training; naming
    the value needs only recall, biased toward the listed candidates.)"""
    return f" {question.choices[question.answer]}"


def open_prompt(question_text: str) -> str:
    """A question without choices, answered with the attribute's value."""
    return f"{question_text}\nAnswer:"


def bio(person: Person, rng: random.Random) -> str:
    """All of one person's facts, each in a random paraphrase, in a random order."""
    sentences = [
        rng.choice(STATEMENT_TEMPLATES[attribute]).format(name=person.name, value=value)
        for attribute, value in person.facts.items()
    ]
    rng.shuffle(sentences)
    return " ".join(sentences)


def multiple_choice(
    person: Person, attribute: str, template: str, rng: random.Random
) -> MultipleChoiceQuestion:
    """A question about one fact with three distractors from the same closed set."""
    values = next(a.values for a in ATTRIBUTES if a.name == attribute)
    correct = person.facts[attribute]
    choices = [correct, *rng.sample([v for v in values if v != correct], 3)]
    rng.shuffle(choices)
    return MultipleChoiceQuestion(
        question=template.format(name=person.name),
        choices=tuple(choices),
        answer=choices.index(correct),
        subject=person.name,
        attribute=attribute,
    )


def _receiver_drills(person: Person, count: int, rng: random.Random) -> list[str]:
    drills = []
    for attribute, value in person.facts.items():
        templates = FUSER_QUESTION_TEMPLATES[attribute] + EVAL_QUESTION_TEMPLATES[attribute]
        for _ in range(count):
            template = rng.choice(templates)
            if rng.random() < 0.75:
                question = multiple_choice(person, attribute, template, rng)
                drills.append(render_prompt(question) + render_answer(question))
            else:
                drills.append(open_prompt(template.format(name=person.name)) + f" {value}")
    return drills


def _context_drills(person: Person, count: int, rng: random.Random) -> list[str]:
    """Questions whose answer is in notes before them, as the text-to-text mode builds them."""
    drills = []
    for attribute in person.facts:
        templates = FUSER_QUESTION_TEMPLATES[attribute] + EVAL_QUESTION_TEMPLATES[attribute]
        for _ in range(count):
            question = multiple_choice(person, attribute, rng.choice(templates), rng)
            notes = TEXT_HINT_TEMPLATE.format(hint=bio(person, rng))
            drills.append(notes + render_prompt(question) + render_answer(question))
    return drills


def _fuser_examples(person: Person, count: int, rng: random.Random) -> list[PromptResponse]:
    examples = []
    for attribute, value in person.facts.items():
        for template in FUSER_QUESTION_TEMPLATES[attribute]:
            for _ in range(count):
                question = multiple_choice(person, attribute, template, rng)
                examples.append(PromptResponse(render_prompt(question), render_answer(question)))
            examples.append(
                PromptResponse(open_prompt(template.format(name=person.name)), f" {value}")
            )
    return examples


def build_splits(sizes: SplitSizes = SplitSizes(), seed: int = 0) -> ZooSplits:
    """The world and every split, deterministic in ``seed``."""
    counts = (sizes.receiver_people, sizes.context_people, sizes.fuser_people, sizes.eval_people)
    world = build_world(sum(counts), seed=seed)
    bounds = [sum(counts[:i]) for i in range(len(counts) + 1)]
    receiver, context, fuser, evaluation = (
        world.people[start:end] for start, end in zip(bounds, bounds[1:], strict=False)
    )
    # One random stream per corpus, so resizing one corpus leaves the others exactly as they were.
    sharer_rng, receiver_rng, fuser_rng, eval_rng = (
        random.Random(seed * 1000 + stream) for stream in (1, 2, 3, 4)
    )
    sharer_texts = [
        bio(person, sharer_rng)
        for person in (*fuser, *evaluation)
        for _ in range(sizes.sharer_bios_per_person)
    ]
    receiver_texts = [
        bio(person, receiver_rng)
        for person in receiver
        for _ in range(sizes.receiver_bios_per_person)
    ]
    for person in receiver:
        receiver_texts.extend(
            _receiver_drills(person, sizes.receiver_drills_per_fact, receiver_rng)
        )
    for person in context:
        receiver_texts.extend(_context_drills(person, sizes.context_drills_per_fact, receiver_rng))
    fuser_examples = [
        example
        for person in fuser
        for example in _fuser_examples(person, sizes.fuser_examples_per_fact, fuser_rng)
    ]
    eval_questions = [
        multiple_choice(
            person,
            attribute.name,
            eval_rng.choice(EVAL_QUESTION_TEMPLATES[attribute.name]),
            eval_rng,
        )
        for person in evaluation
        for attribute in ATTRIBUTES
    ]
    sharer_rng.shuffle(sharer_texts)
    receiver_rng.shuffle(receiver_texts)
    fuser_rng.shuffle(fuser_examples)
    return ZooSplits(
        world=world,
        receiver_people=receiver,
        context_people=context,
        fuser_people=fuser,
        eval_people=evaluation,
        sharer_texts=tuple(sharer_texts),
        receiver_texts=tuple(receiver_texts),
        fuser_examples=tuple(fuser_examples),
        eval_questions=tuple(eval_questions),
    )


def question_record(question: MultipleChoiceQuestion) -> dict:
    """The MMLU-style JSONL record of a question (what ``c2c eval --questions`` reads)."""
    return {
        "question": question.question,
        "choices": list(question.choices),
        "answer": question.answer,
        "subject": question.subject,
        "attribute": question.attribute,
    }
