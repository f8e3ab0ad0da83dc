"""The zoo's splits: who knows what, and that no evaluation question leaks into training."""

from __future__ import annotations

import pytest

from c2c.zoo.corpora import (
    EVAL_QUESTION_TEMPLATES,
    FUSER_QUESTION_TEMPLATES,
    SplitSizes,
    build_splits,
    render_prompt,
)
from c2c.zoo.world import ATTRIBUTES
from receiver_service.pipeline import TEXT_HINT_TEMPLATE

SMALL = SplitSizes(
    receiver_people=30,
    context_people=10,
    fuser_people=40,
    eval_people=25,
    sharer_bios_per_person=3,
    receiver_bios_per_person=2,
    receiver_drills_per_fact=2,
    fuser_examples_per_fact=1,
)


@pytest.fixture(scope="module")
def splits():
    return build_splits(SMALL, seed=3)


def _names(people):
    return {person.name for person in people}


def test_people_of_the_four_splits_are_disjoint(splits):
    groups = [
        _names(splits.receiver_people),
        _names(splits.context_people),
        _names(splits.fuser_people),
        _names(splits.eval_people),
    ]
    assert [len(group) for group in groups] == [30, 10, 40, 25]
    assert len(set().union(*groups)) == sum(len(group) for group in groups)


def test_question_templates_of_fuser_and_evaluation_are_disjoint():
    for attribute in ATTRIBUTES:
        fuser = set(FUSER_QUESTION_TEMPLATES[attribute.name])
        evaluation = set(EVAL_QUESTION_TEMPLATES[attribute.name])
        assert fuser and evaluation and not fuser & evaluation


def test_no_evaluation_question_or_person_appears_in_any_training_text(splits):
    training_texts = [
        *splits.sharer_texts,
        *splits.receiver_texts,
        *(example.prompt + example.response for example in splits.fuser_examples),
    ]
    eval_prompts = [render_prompt(question) for question in splits.eval_questions]
    receiver_side = [
        *splits.receiver_texts,
        *(example.prompt + example.response for example in splits.fuser_examples),
    ]
    for text in training_texts:
        for question, prompt in zip(splits.eval_questions, eval_prompts, strict=True):
            assert question.question not in text
            assert prompt not in text
    for text in receiver_side:
        for name in _names(splits.eval_people):
            assert name not in text


def test_fuser_prompts_use_only_fuser_people_and_templates(splits):
    fuser_names = _names(splits.fuser_people)
    eval_templates = [t for group in EVAL_QUESTION_TEMPLATES.values() for t in group]
    for example in splits.fuser_examples:
        question_line = example.prompt.splitlines()[0]
        subjects = [name for name in fuser_names if name in question_line]
        assert len(subjects) == 1
        assert not any(question_line == t.format(name=subjects[0]) for t in eval_templates)


def test_the_sharer_reads_the_fuser_and_eval_people_and_never_a_question(splits):
    corpus = "\n".join(splits.sharer_texts)
    assert "Answer:" not in corpus and "\nA. " not in corpus and "___" not in corpus
    for person in (*splits.fuser_people, *splits.eval_people):
        for value in person.facts.values():
            assert any(person.name in t and value in t for t in splits.sharer_texts)


def test_the_receiver_knows_the_format_but_only_its_own_people(splits):
    corpus = "\n".join(splits.receiver_texts)
    assert "\nAnswer:" in corpus and "\nA. " in corpus
    mentioned = {person.name for person in splits.world.people if person.name in corpus}
    assert mentioned == _names(splits.receiver_people) | _names(splits.context_people)


def test_context_people_reach_the_receiver_only_inside_text_to_text_notes(splits):
    context = _names(splits.context_people)
    notes_prefix = TEXT_HINT_TEMPLATE.split("{hint}")[0]
    for text in splits.receiver_texts:
        if any(name in text for name in context):
            assert text.startswith(notes_prefix)


def test_evaluation_asks_every_attribute_of_every_eval_person_with_a_correct_choice(splits):
    assert len(splits.eval_questions) == 25 * len(ATTRIBUTES)
    people = {person.name: person for person in splits.eval_people}
    for question in splits.eval_questions:
        assert len(set(question.choices)) == 4
        assert (
            question.choices[question.answer] == people[question.subject].facts[question.attribute]
        )


def test_the_same_seed_gives_the_same_splits_and_another_seed_does_not():
    assert build_splits(SMALL, seed=3) == build_splits(SMALL, seed=3)
    assert build_splits(SMALL, seed=4).eval_questions != build_splits(SMALL, seed=3).eval_questions
