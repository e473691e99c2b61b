"""The agent loop's decisions that need no I/O: budgets, caps, stuck detection."""

from __future__ import annotations

import pytest

from daemon.agent.conversation import Budget, check_budget, check_stuck, commit_message, effective_budget
from daemon.errors import PermanentError
from daemon.store import Usage

DEFAULTS = Budget(max_turns=50, max_tokens=1_000_000, max_usd=5.0)
CAPS = Budget(max_turns=100, max_tokens=5_000_000, max_usd=20.0)


def test_a_task_override_applies_within_the_operator_caps():
    assert effective_budget({}, DEFAULTS, CAPS) == DEFAULTS
    assert effective_budget({"max_turns": 10, "max_usd": 1.5}, DEFAULTS, CAPS) == Budget(10, 1_000_000, 1.5)
    assert effective_budget({"max_turns": 10_000, "max_usd": 999}, DEFAULTS, CAPS) == Budget(100, 1_000_000, 20.0)


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


def test_commit_message_has_a_short_title_and_the_summary():
    message = commit_message("Make the parser accept " + "very " * 30 + "long input", "Changed parse().")
    title, blank, body = message.split("\n", 2)
    assert len(title) <= 72 and title.endswith("...") and blank == ""
    assert body.startswith("Changed parse().")
