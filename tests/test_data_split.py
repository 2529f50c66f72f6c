"""The train/validation split: disjoint, complete, stratified, deterministic and stable."""

from __future__ import annotations

import random

import pytest

from convnets.data.split import stratified_split, val_count


def _dataset(counts: dict[str, int]):
    keys, labels = [], []
    for label, (cls, n) in enumerate(counts.items()):
        keys += [f"{cls}/img_{i:04d}.jpg" for i in range(n)]
        labels += [label] * n
    return keys, labels


def test_disjoint_complete_and_stratified():
    keys, labels = _dataset({"a": 50, "b": 31, "c": 7, "d": 2})
    train, val = stratified_split(keys, labels, 0.2, seed=3)
    assert not set(train) & set(val)
    assert sorted(train + val) == list(range(len(keys)))
    per_class = {lab: sum(1 for i in val if labels[i] == lab) for lab in range(4)}
    assert per_class == {0: 10, 1: 6, 2: 1, 3: 1}  # round(0.2 n), at least one each side
    assert all(sum(1 for i in train if labels[i] == lab) >= 1 for lab in range(4))


def test_alpaca_sized_split_matches_course_counts():
    keys, labels = _dataset({"alpaca": 142, "not alpaca": 185})
    train, val = stratified_split(keys, labels, 0.2, seed=0)
    assert (len(train), len(val)) == (262, 65)


def test_deterministic_and_order_independent_but_seed_dependent():
    keys, labels = _dataset({"a": 40, "b": 40})
    _, val = stratified_split(keys, labels, 0.25, seed=1)
    order = list(range(len(keys)))
    random.Random(0).shuffle(order)
    _, val_shuffled = stratified_split([keys[i] for i in order], [labels[i] for i in order], 0.25, seed=1)
    assert {keys[i] for i in val} == {keys[order[i]] for i in val_shuffled}
    _, val_other_seed = stratified_split(keys, labels, 0.25, seed=2)
    assert set(val) != set(val_other_seed)


@pytest.mark.parametrize("n", [2, 5, 9, 10, 37])
def test_adding_a_file_moves_at_most_one_existing_file(n):
    rng = random.Random(n)
    for trial in range(30):
        keys, labels = _dataset({"a": n, "b": 12})
        _, val = stratified_split(keys, labels, 0.2, seed=trial)
        before = {keys[i] for i in val}
        new_key = f"a/new_{rng.random()}.jpg"
        keys2, labels2 = keys + [new_key], labels + [0]
        _, val2 = stratified_split(keys2, labels2, 0.2, seed=trial)
        after = {keys2[i] for i in val2} - {new_key}
        moved = before ^ after
        assert len(moved) <= 1
        assert all(k.startswith("a/") for k in moved)  # the other class never moves


def test_val_count_steps_by_at_most_one():
    for frac in (0.1, 0.2, 0.33, 0.5, 0.9):
        counts = [val_count(n, frac) for n in range(2, 200)]
        assert all(0 <= b - a <= 1 for a, b in zip(counts, counts[1:]))


def test_bad_fraction():
    with pytest.raises(ValueError, match="validation_split"):
        stratified_split(["a"], [0], 1.5)
