"""The setup phase's events as ``agentctl tail`` (and the demo) prints them: one readable line
each, from the data ``daemon/agent/setup_phase.py`` emits."""

from __future__ import annotations

import pytest

from control.render import event_line


def _detail(kind: str, data: dict) -> str:
    """The line's detail: what follows ``seq``, the clock and the type."""
    return event_line({"seq": 7, "event": kind, "data": data}).split(None, 3)[3]


def test_the_setup_starting_names_its_steps_and_time_limit():
    data = {"steps": ["setup_command", ".agentd/setup.sh"], "timeout_s": 600.0}
    assert event_line({"seq": 5, "event": "setup.started", "data": data}) == (
        "   5  --:--:--  setup.started      setup_command then .agentd/setup.sh (time limit 600 s)"
    )
    assert _detail("setup.started", {"steps": [".agentd/setup.sh"], "timeout_s": 2.5}) == (
        ".agentd/setup.sh (time limit 2.5 s)"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("", "(no output)"),
        ("Collecting tinypkg\n", "Collecting tinypkg"),
        ("Collecting tinypkg\n  Downloading tinypkg-1.0.tar.gz\n", "Collecting tinypkg (+1 line)"),
        ("a\nb\nc\n", "a (+2 lines)"),
    ],
)
def test_setup_output_shows_its_first_line_and_how_many_more(text, shown):
    assert _detail("setup.output", {"text": text}) == shown


FINISHED = {
    "steps": [".agentd/setup.sh"],
    "output_bytes": 120,
    "refused": [],
    "refused_total": 0,
    "proxy_connections": 0,
    "proxy_bytes": 0,
}


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ({"exit_code": 0, "duration_s": 3.25, "timed_out": False}, "succeeded after 3.25 s"),
        ({"exit_code": 2, "duration_s": 0.5, "timed_out": False}, "failed with exit code 2 after 0.5 s"),
        (
            {"exit_code": None, "duration_s": 600.0, "timed_out": True},
            "stopped at its time limit after 600 s",
        ),
        (
            {"exit_code": 0, "duration_s": 4, "timed_out": False, "proxy_connections": 1},
            "succeeded after 4 s (1 proxy connection)",
        ),
        (
            {
                "exit_code": 1,
                "duration_s": 1.5,
                "timed_out": False,
                "proxy_connections": 3,
                "refused_total": 2,
                "refused": [
                    {"host": "evil.example", "port": 443, "reason": "not_allowed", "detail": "..."},
                    {"host": "10.0.0.1", "port": 80, "reason": "ip_literal", "detail": "..."},
                ],
            },
            (
                "failed with exit code 1 after 1.5 s"
                " (3 proxy connections; refused 2: evil.example:443 not_allowed, …)"
            ),
        ),
    ],
)
def test_setup_finished_says_how_it_ended_and_what_the_proxy_did(data, shown):
    assert _detail("setup.finished", {**FINISHED, **data}) == shown


def test_a_setup_not_run_says_why():
    data = {"exit_code": None, "skipped": "no sandbox", "steps": ["setup_command"]}
    assert _detail("setup.finished", data) == "setup_command not run: no sandbox"


def test_setup_lines_stay_one_short_line_whatever_the_data():
    """Data from another version (missing or odd fields) still gives a line, never an error."""
    assert _detail("setup.started", {}) == "setup"
    assert _detail("setup.finished", {}) == "ended without an exit code"
    assert _detail("setup.finished", {"refused_total": 1, "refused": "x"}) == (
        "ended without an exit code (refused 1)"
    )
    long = "x" * 500 + "\n" + "y\n" * 1000
    line = event_line({"seq": 1, "event": "setup.output", "data": {"text": long}})
    assert len(line) < 200 and "\n" not in line
