"""The agent loop's decisions that need no I/O: budgets, caps, stuck detection."""

from __future__ import annotations

import pytest

from daemon.agent.conversation import (
    INTERRUPTED,
    Budget,
    check_budget,
    check_stuck,
    commit_message,
    effective_budget,
)
from daemon.errors import PermanentError
from daemon.store import Usage

DEFAULTS = Budget(max_turns=50, max_tokens=1_000_000, max_usd=5.0)
CAPS = Budget(max_turns=100, max_tokens=5_000_000, max_usd=20.0)


def test_a_task_override_applies_within_the_operator_caps():
    assert effective_budget({}, DEFAULTS, CAPS) == DEFAULTS
    assert effective_budget({"max_turns": 10, "max_usd": 1.5}, DEFAULTS, CAPS) == Budget(10, 1_000_000, 1.5)
    assert effective_budget({"max_turns": 10_000, "max_usd": 999}, DEFAULTS, CAPS) == Budget(
        100, 1_000_000, 20.0
    )


@pytest.mark.parametrize(
    ("turns", "usage", "which"),
    [
        (50, Usage(), "turns"),
        (3, Usage(input_tokens=900_000, output_tokens=50_000, cache_write_tokens=50_000), "tokens"),
        (3, Usage(cost_usd=5.0), "usd"),
    ],
)
def test_each_budget_stops_the_task_with_its_name(turns, usage, which):
    with pytest.raises(PermanentError) as caught:
        check_budget(DEFAULTS, turns, usage)
    assert caught.value.code == f"budget_exceeded:{which}"


def test_cache_reads_do_not_count_against_the_token_budget():
    check_budget(DEFAULTS, 3, Usage(input_tokens=10, cache_read_tokens=50_000_000, cost_usd=1.0))


def call(name, **input):
    return {"type": "tool_use", "id": "x", "name": name, "input": input}


def turns_of(*calls):
    return [{"role": "assistant", "content": [c]} for c in calls]


def test_the_same_call_n_times_in_a_row_is_stuck_but_variety_is_not():
    same = [call("bash", command="ls")] * 4
    with pytest.raises(PermanentError) as caught:
        check_stuck(turns_of(*same), repeats=4)
    assert caught.value.code == "stuck"
    check_stuck(turns_of(*same[:3]), repeats=4)
    check_stuck(turns_of(*same[:3], call("bash", command="ls -l")), repeats=4)
    check_stuck(turns_of(call("bash", command="ls"), call("bash", command="pwd"), *same[:3]), repeats=4)


def _stuck_by_the_whole_conversation(turns, repeats):
    """The rule as first written: every call of the conversation, then its last `repeats`."""
    import json

    calls = [
        (b["name"], json.dumps(b.get("input"), sort_keys=True))
        for t in turns
        if t["role"] == "assistant"
        for b in t["content"]
        if b.get("type") == "tool_use"
    ]
    return len(calls) >= repeats and len(set(calls[-repeats:])) == 1


def test_stuck_looks_back_only_as_far_as_it_must_and_decides_as_before():
    """Mixed turns (several calls, text only, user turns between) decide as the whole-conversation rule."""
    import random

    rng = random.Random(7)
    blocks = [
        call("bash", command="ls"),
        call("bash", command="ls"),
        call("bash", command="pwd"),
        call("str_replace_based_edit_tool", command="view", path="a"),
        {"type": "text", "text": "thinking"},
    ]
    for _ in range(2000):
        turns = []
        for _ in range(rng.randrange(0, 9)):
            turns.append({"role": "user", "content": [{"type": "text", "text": "go"}]})
            turns.append({"role": "assistant", "content": rng.choices(blocks, k=rng.randrange(0, 4))})
        repeats = rng.randrange(2, 6)
        try:
            check_stuck(turns, repeats)
            stuck = False
        except PermanentError as e:
            stuck = e.code == "stuck"  # the other rules (alternation) are tested on their own
        assert stuck == _stuck_by_the_whole_conversation(turns, repeats), (turns, repeats)


def stuck_code(turns, repeats=5):
    try:
        check_stuck(turns, repeats)
    except PermanentError as e:
        return e.code
    return None


A, B, C = call("bash", command="make"), call("bash", command="git diff"), call("bash", command="ls")


def test_six_steps_alternating_between_two_calls_is_stuck_alternating():
    assert stuck_code(turns_of(A, B, A, B, A, B)) == "stuck_alternating"
    assert stuck_code(turns_of(C, C, B, A, B, A, B, A)) == "stuck_alternating"
    # Two calls in one turn count as two steps.
    assert stuck_code([{"role": "assistant", "content": [A, B]}] * 3) == "stuck_alternating"


@pytest.mark.parametrize(
    "calls",
    [
        (A, B, A, B, A),  # five steps only
        (A, B, A, B, A, C),  # the last step breaks the pattern
        (A, B, A, C, A, B),
        (A, B, B, A, A, B),
        (C, A, B, A, B, A, B, C),  # an alternation that is over
    ],
)
def test_near_alternations_are_not_stuck(calls):
    assert stuck_code(turns_of(*calls)) is None


def test_the_same_call_alternating_with_itself_is_the_plain_repeat():
    assert stuck_code(turns_of(A, A, A, A, A, A), repeats=6) == "stuck"


def ran(*outcomes):
    """Turns of calls and their results: (call, is_error) in order, each call a fresh id."""
    turns = []
    for i, (block, is_error) in enumerate(outcomes):
        use = {**block, "id": f"t{i}"}
        result = {"type": "tool_result", "tool_use_id": f"t{i}", "content": "no", "is_error": is_error}
        turns += [{"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    return turns


def test_the_same_call_failing_three_times_within_ten_calls_is_stuck_failing():
    assert stuck_code(ran((A, True), (A, True), (A, True))) == "stuck_failing"
    spread = [(A, True), (B, False), (C, False), (A, True), (B, False), (C, False), (A, True)]
    assert stuck_code(ran(*spread)) == "stuck_failing"
    assert (
        stuck_code(
            ran((A, True), *[(call("bash", command=str(i)), False) for i in range(7)], (A, True), (A, True))
        )
        == "stuck_failing"
    )


@pytest.mark.parametrize(
    "outcomes",
    [
        [(A, True), (A, True), (A, False)],  # the third time it worked
        [(A, True), (A, True), (B, True)],  # two different failing calls
        [(A, True), (call("bash", command="make test"), True), (A, True)],  # another input
        # The first failure is eleven calls back: out of the window.
        [(A, True), *[(call("bash", command=str(i)), False) for i in range(9)], (A, True), (A, True)],
    ],
)
def test_near_failing_repeats_are_not_stuck(outcomes):
    assert stuck_code(ran(*outcomes)) is None


def test_interrupted_calls_are_not_failures_of_their_own():
    turns = ran((A, True), (A, True), (A, True))
    for turn in turns[1::2]:
        turn["content"][0]["content"] = INTERRUPTED
    assert stuck_code(turns) is None


def test_commit_message_has_a_short_title_and_the_summary():
    message = commit_message("Make the parser accept " + "very " * 30 + "long input", "Changed parse().")
    title, blank, body = message.split("\n", 2)
    assert len(title) <= 72 and title.endswith("...") and blank == ""
    assert body.startswith("Changed parse().")


def test_commit_message_drops_control_characters_the_model_or_user_sent():
    """A NUL cannot even be passed to git; escapes would reach whoever reads the log."""
    message = commit_message("fix\x00 it\r\nnow", "done\x1b[31m red\ud800\tok")
    assert message == "fix it now\n\ndone[31m red\tok\n\nPrompt:\nfix it\nnow\n"
