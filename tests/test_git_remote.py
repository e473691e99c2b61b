"""Which repository URLs are accepted, and how git's failures are classified."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import PermanentError, TransientError
from daemon.git import GitAuth, classify_git_error, parse_remote, redact
from daemon.git.process import git_env, ssh_command


@pytest.mark.parametrize(
    "url, kind, host, path",
    [
        ("https://github.com/octo/project.git", "https", "github.com", "octo/project.git"),
        ("https://git.example.org:8443/team/sub/repo", "https", "git.example.org", "team/sub/repo"),
        ("git@github.com:octo/project.git", "ssh", "github.com", "octo/project.git"),
        ("ssh://git@GitHub.com/octo/project.git", "ssh", "github.com", "octo/project.git"),
        ("ssh://git@host.example:2222/srv/repo.git", "ssh", "host.example", "srv/repo.git"),
        ("  https://github.com/octo/project  ", "https", "github.com", "octo/project"),
    ],
)
def test_accepted_remotes(url, kind, host, path):
    remote = parse_remote(url, allow_local=False)
    assert (remote.kind, remote.host, remote.path) == (kind, host, path)
    assert remote.url == url.strip()


@pytest.mark.parametrize(
    "url, reason",
    [
        ("ext::sh -c touch% /tmp/pwned", "spaces"),
        ("ext::sh", "remote-helper"),
        ("fd::3", "remote-helper"),
        ("-uploadpack=evil", "start with '-'"),
        ("--upload-pack=evil", "start with '-'"),
        ("ssh://-oProxyCommand=evil/repo", "invalid host"),
        ("git@-oProxyCommand=evil:repo", "invalid host"),
        ("https://x-access-token:ghp_secret@github.com/o/r.git", "must not contain credentials"),
        ("https://ghp_secret@github.com/o/r.git", "must not contain credentials"),
        ("ssh://git:hunter2@github.com/o/r.git", "must not contain credentials"),
        ("http://github.com/o/r.git", "plain http"),
        ("ftp://example.com/r.git", "not supported"),
        ("git://github.com/o/r.git", "not supported"),
        ("https://github.com/", "no repository path"),
        ("https://github.com/o/r\n.git", "control characters"),
        ("/srv/repos/project.git", "local repository paths are not allowed"),
        ("file:///srv/repos/project.git", "local repository paths are not allowed"),
        ("", "empty"),
    ],
)
def test_refused_remotes(url, reason):
    with pytest.raises(PermanentError, match=reason) as info:
        parse_remote(url, allow_local=False)
    assert "secret" not in str(info.value) and "hunter2" not in str(info.value)


def test_local_remotes_when_allowed(tmp_path):
    bare = tmp_path / "p.git"
    for url in (str(bare), bare.as_uri()):
        remote = parse_remote(url, allow_local=True)
        assert (remote.kind, remote.url, remote.host) == ("local", bare.as_uri(), None)
    assert parse_remote("http://127.0.0.1:9/p.git", allow_local=True).kind == "http"
    with pytest.raises(PermanentError, match="remote-helper"):
        parse_remote("ext::sh", allow_local=True)
    with pytest.raises(PermanentError, match="file:///path"):
        parse_remote("file://otherhost/srv/p.git", allow_local=True)


def test_private_hosts_need_the_operator():
    """Literal hosts are checked at parse time (the table is in test_git_addresses.py);
    allow_local implies allow_private, since the fakes of tests listen on 127.0.0.1."""
    for url in ("https://127.0.0.1/o/r.git", "git@10.0.0.5:o/r.git", "https://localhost/o/r"):
        with pytest.raises(PermanentError, match="AGENTD_ALLOW_PRIVATE_REMOTES=1") as info:
            parse_remote(url, allow_local=False)
        assert info.value.code == "repo_address_refused"
        assert parse_remote(url, allow_local=False, allow_private=True).url == url
        assert parse_remote(url, allow_local=True).url == url
    # allow_private does not open what only allow_local does.
    with pytest.raises(PermanentError, match="plain http"):
        parse_remote("http://10.0.0.5/o/r.git", allow_local=False, allow_private=True)
    with pytest.raises(PermanentError, match="local repository paths"):
        parse_remote("/srv/r.git", allow_local=False, allow_private=True)


@pytest.mark.parametrize(
    "url", ["https://[zzz]/o/r", "ssh://git@[1.2.3.4:22]/o/r", "https://[::1/o/r", "https://h:99999/o/r"]
)
def test_urls_python_cannot_split_are_refused_not_crashing(url):
    with pytest.raises(PermanentError) as info:
        parse_remote(url, allow_local=True)
    assert info.value.code == "invalid_repo_url"


def test_github_detection():
    assert parse_remote("https://github.com/octo/project.git", False).github() == ("octo", "project")
    assert parse_remote("git@github.com:octo/project", False).github().name == "project"
    assert parse_remote("https://github.com/octo/project/extra", False).github() is None
    assert parse_remote("https://gitlab.com/octo/project", False).github() is None
    ghe = parse_remote("https://git.corp.example/team/tool.git", False)
    assert ghe.github() is None
    assert ghe.github("git.corp.example") == ("team", "tool")
    assert parse_remote(str(Path("/tmp/x")), True).github() is None


@pytest.mark.parametrize(
    "stderr, cls, words",
    [
        (
            "fetch-pack: unexpected disconnect while reading sideband packet\nfatal: early EOF",
            TransientError,
            "connection failed",
        ),
        (
            "error: RPC failed; HTTP 502 curl 22 The requested URL returned error: 502",
            TransientError,
            "server had an error",
        ),
        (
            "fatal: unable to access 'https://h/r/': The requested URL returned error: 503",
            TransientError,
            "server had an error",
        ),
        (
            "remote: Invalid username or password.\nfatal: Authentication failed for 'https://h/r/'",
            PermanentError,
            "authentication failed",
        ),
        (
            "fatal: could not read Username for 'https://h': terminal prompts disabled",
            PermanentError,
            "authentication failed",
        ),
        (
            ("git@github.com: Permission denied (publickey).\nfatal: Could not read from remote repository."),
            PermanentError,
            "permission denied",
        ),
        (
            (
                "remote: Permission to o/r.git denied to bot.\nfatal: unable to access 'https://h/o/r/': "
                "The requested URL returned error: 403"
            ),
            PermanentError,
            "permission denied",
        ),
        (
            "remote: Repository not found.\nfatal: repository 'https://github.com/o/r.git/' not found",
            PermanentError,
            "repository not found",
        ),
        (
            (
                "warning: Could not find remote branch nope to clone.\nfatal: Remote branch nope not "
                "found in upstream origin"
            ),
            PermanentError,
            "branch not found",
        ),
        ("something nobody has seen before", PermanentError, "exit 128"),
    ],
)
def test_classify_git_error(stderr, cls, words):
    err = classify_git_error("clone", 128, stderr)
    assert type(err) is cls
    assert words in str(err)
    assert str(err).startswith("git clone failed")


@pytest.mark.parametrize(
    "stderr, message",
    [
        (
            "fatal: unable to access 'https://github.com/o/r/': Could not resolve host: github.com",
            "could not resolve the repository host (github.com)",
        ),
        (
            (
                "fatal: unable to access 'https://h/r/': Failed to connect to github.com port 443: "
                "Connection refused"
            ),
            "could not reach the repository (github.com): connection refused",
        ),
        (
            (
                "ssh: connect to host 140.82.112.3 port 22: Connection timed out\nfatal: Could not read "
                "from remote repository."
            ),
            "could not reach the repository (github.com): connection timed out",
        ),
    ],
)
def test_a_remote_out_of_reach_is_said_without_gits_words(stderr, message):
    err = classify_git_error("clone", 128, stderr, host="github.com")
    assert type(err) is TransientError and str(err) == message


def test_a_pinned_ssh_remote_connects_to_the_checked_address():
    from daemon.git.addresses import ResolvedRemote

    remote = parse_remote("git@git.example.com:o/r.git", False)
    pin = ResolvedRemote(remote, "git.example.com", 22, ("140.82.112.3",), pinned=True)
    env = git_env(remote, GitAuth(), pin=pin)
    assert env["GIT_SSH_COMMAND"].endswith("-o HostKeyAlias=git.example.com -o Hostname=140.82.112.3")


def test_redact_removes_tokens_and_url_credentials():
    text = "fatal: https://user:tok123@h/r and tok123 and https://tok123@h/x"
    assert redact(text, ["tok123"]) == "fatal: https://***@h/r and *** and https://***@h/x"
    assert redact("https://me:pw@h/r") == "https://***@h/r"


def test_token_only_in_the_environment_of_https_git(monkeypatch):
    monkeypatch.setenv("GIT_DIR", "/elsewhere")
    monkeypatch.setenv("SSH_ASKPASS", "/usr/bin/ssh-askpass")
    https = parse_remote("https://github.com/o/r.git", False)
    env = git_env(https, GitAuth(token="tok-xyz"))
    assert "GIT_DIR" not in env and "SSH_ASKPASS" not in env
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["LC_ALL"] == "C"
    assert Path(env["GIT_ASKPASS"]).read_text().count("tok-xyz") == 0
    assert [k for k, v in env.items() if v == "tok-xyz"] == ["AGENTD_GIT_TOKEN"]
    assert env["GIT_ALLOW_PROTOCOL"] == "https:ssh"

    no_token = git_env(https, GitAuth())
    assert no_token["GIT_ASKPASS"] == "" and "tok-xyz" not in no_token.values()

    ssh = git_env(
        parse_remote("git@github.com:o/r.git", False),
        GitAuth(token="tok-xyz", ssh_key=Path("/etc/agentd/deploy key")),
    )
    assert "tok-xyz" not in ssh.values()
    assert ssh["GIT_SSH_COMMAND"] == ssh_command(Path("/etc/agentd/deploy key"))
    assert ssh["GIT_SSH_COMMAND"] == (
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new "
        "-i '/etc/agentd/deploy key' -o IdentitiesOnly=yes"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/o/%zz.git",
        "https://github.com/o/r.git%",
        "https://github.com/o/%0a.git",
        "https://github.com/o/%7f.git",
        "https://github.com:0/o/r.git",
    ],
)
def test_urls_git_cannot_normalise_are_refused(url):
    """git ignores http.<url>.* settings for a URL it cannot normalise: the address pins too."""
    with pytest.raises(PermanentError, match=r"escape|port") as info:
        parse_remote(url, False)
    assert info.value.code == "invalid_repo_url"
