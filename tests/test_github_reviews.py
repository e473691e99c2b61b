"""Reading a pull request's review feedback from the fake GitHub REST API (real HTTP on
127.0.0.1): pagination and its bounds, review comments grouped into threads, only failing
checks, cut texts, GitHub's refusals; and the user turn made from it."""

from __future__ import annotations

import pytest
import trio

from daemon.errors import PermanentError
from daemon.git import github_reviews
from daemon.git.github_reviews import Feedback, PullRef, Review, parse_pull_url, read_feedback, render_turn

from .fakes.github_api import FakeGitHubAPI

TOKEN = "ghp_reviewtoken"
PULL = PullRef("acme", "calc", 1)


@pytest.fixture
async def github():
    api = FakeGitHubAPI(TOKEN)
    api.add_pull("acme", "calc", head="agentd/fix", base="main")
    async with trio.open_nursery() as nursery:
        await nursery.start(api.serve)
        yield api
        nursery.cancel_scope.cancel()


def test_a_pull_url_is_one_on_the_configured_host_only():
    assert parse_pull_url("https://github.com/acme/calc/pull/12", "github.com") == PullRef("acme", "calc", 12)
    assert parse_pull_url("https://github.com/acme/calc/pull/12", "ghe.example") is None
    assert parse_pull_url("https://github.com/acme/calc/issues/12", "github.com") is None
    assert parse_pull_url("https://github.com/acme/calc/pull/x", "github.com") is None
    assert parse_pull_url("", "github.com") is None


async def test_reviews_threads_and_only_the_failing_checks_are_read(github):
    sha = github.pulls[0]["head_sha"]
    github.add_review("acme", "calc", 1, user="carol", state="CHANGES_REQUESTED", body="Handle negatives.")
    github.add_review("acme", "calc", 1, user="dave", state="APPROVED", body="LGTM")
    github.add_review("acme", "calc", 1, user="erin", state="COMMENTED", body="")  # only inline comments
    first = github.add_review_comment(
        "acme", "calc", 1, user="carol", path="calc.py", line=3, body="Why minus?"
    )
    github.add_review_comment(
        "acme", "calc", 1, user="alice", path="calc.py", line=3, body="Fixed.", in_reply_to=first["id"]
    )
    github.add_review_comment("acme", "calc", 1, user="erin", path="README.md", line=None, body="Typo.")
    github.add_check_run(
        "acme", "calc", sha, name="tests", conclusion="failure", title="2 failed", summary="test_add"
    )
    github.add_check_run("acme", "calc", sha, name="lint", conclusion="success")
    github.add_check_run("acme", "calc", sha, name="slow", conclusion="timed_out")
    github.add_check_run("acme", "calc", sha, name="deploy", conclusion=None)
    github.add_check_run("acme", "calc", "f" * 40, name="old", conclusion="failure")  # another commit

    feedback = await read_feedback(github.url, TOKEN, PULL)

    assert feedback.reviews == [Review("carol", "CHANGES_REQUESTED", "Handle negatives.")]
    assert [(t.path, t.line, [(c.author, c.body) for c in t.comments]) for t in feedback.threads] == [
        ("calc.py", 3, [("carol", "Why minus?"), ("alice", "Fixed.")]),
        ("README.md", None, [("erin", "Typo.")]),
    ]
    assert [(c.name, c.conclusion, c.title, c.summary) for c in feedback.checks] == [
        ("tests", "failure", "2 failed", "test_add"),
        ("slow", "timed_out", "", ""),
    ]
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r in github.requests)

    turn = render_turn(feedback, PULL)
    assert "acme/calc#1" in turn
    assert "carol (CHANGES_REQUESTED):\n> Handle negatives." in turn
    assert "calc.py:3\ncarol:\n> Why minus?\nalice:\n> Fixed." in turn
    assert "README.md:?" in turn
    assert "tests (failure): 2 failed\n> test_add" in turn
    assert "does not say which are resolved" in turn
    assert "LGTM" not in turn and "lint" not in turn and "deploy" not in turn


async def test_every_page_is_read_up_to_the_bound(github, monkeypatch):
    monkeypatch.setattr(github_reviews, "PER_PAGE", 2)
    for i in range(5):
        github.add_review_comment("acme", "calc", 1, user="carol", path=f"f{i}.py", line=i, body=f"c{i}")
    feedback = await read_feedback(github.url, TOKEN, PULL)
    assert [t.path for t in feedback.threads] == [f"f{i}.py" for i in range(5)]  # three pages

    monkeypatch.setattr(github_reviews, "MAX_PAGES", 2)
    github.requests.clear()
    feedback = await read_feedback(github.url, TOKEN, PULL)
    assert [t.path for t in feedback.threads] == [f"f{i}.py" for i in range(4)]
    assert [r.query["page"] for r in github.requests if r.path.endswith("/comments")] == ["1", "2"]


async def test_texts_are_cut_and_made_sendable(github, monkeypatch):
    github.add_review("acme", "calc", 1, user="carol", state="COMMENTED", body="x" * 10_000 + "\x1b[31m")
    github.add_review("acme", "calc", 1, user="dave", state="COMMENTED", body="bell\x07 here")
    feedback = await read_feedback(github.url, TOKEN, PULL)
    assert len(feedback.reviews[0].body) == github_reviews.MAX_TEXT
    assert feedback.reviews[1].body == "bell\N{REPLACEMENT CHARACTER} here"

    monkeypatch.setattr(github_reviews, "MAX_TURN", 500)
    turn = render_turn(feedback, PULL)
    assert turn.endswith("[The feedback was cut here: it is longer than agentd passes on.]")
    assert len(turn) < 600


async def test_nothing_to_address_is_empty(github):
    github.add_review("acme", "calc", 1, user="dave", state="APPROVED", body="LGTM")
    github.add_check_run("acme", "calc", github.pulls[0]["head_sha"], name="tests", conclusion="success")
    assert (await read_feedback(github.url, TOKEN, PULL)).empty
    assert Feedback([], [], []).empty


async def test_githubs_refusals_are_clear_errors(github):
    with pytest.raises(PermanentError) as refused:
        await read_feedback(github.url, "ghp_wrong", PULL)
    assert refused.value.code == "github_auth"
    with pytest.raises(PermanentError) as missing:
        await read_feedback(github.url, TOKEN, PullRef("acme", "calc", 7))
    assert missing.value.code == "github_not_found"


async def test_an_answer_over_the_byte_bound_is_refused(github, monkeypatch):
    monkeypatch.setattr(github_reviews, "MAX_RESPONSE", 1_000)
    github.add_review("acme", "calc", 1, user="carol", state="COMMENTED", body="x" * 2_000)
    with pytest.raises(PermanentError) as refused:
        await read_feedback(github.url, TOKEN, PULL)
    assert refused.value.code == "github_too_large"
