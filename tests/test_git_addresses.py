"""Which addresses a repository URL may reach, and that git is held to the address checked.

Literal hosts are refused at parse time in every form git would read; names are resolved (by
a fake resolver here: no test does real DNS) and every address checked; the pins then make a
real git and a real ssh connect where the check said, and nowhere else.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import socket
import subprocess

import pytest
import trio

from daemon.errors import PermanentError, TransientError
from daemon.git import parse_remote
from daemon.git.addresses import (
    ResolvedRemote,
    address_class,
    connection_error,
    git_pin_config,
    ip_literal,
    resolve_remote,
    ssh_pin_options,
)
from daemon.git.process import run_git, ssh_command
from tests.fakes.git_http import GitHttpServer, make_bare_repo
from tests.fakes.threaded_http import QuietHandler, ThreadedHTTPFake

HOST = "git.agentd-test.invalid"  # .invalid: no real resolver could answer for it


# -- parse time: literals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, cls",
    [
        ("127.0.0.1", "loopback"),
        ("127.1", "loopback"),  # short form
        ("2130706433", "loopback"),  # one decimal number
        ("0177.0.0.1", "loopback"),  # octal
        ("0x7f.1", "loopback"),  # hex, short
        ("0X7F.0.0.1", "loopback"),
        ("017700000001", "loopback"),  # one octal number
        ("0x7f000001", "loopback"),  # one hex number
        ("127.255.255.254", "loopback"),
        ("[::1]", "loopback"),
        ("[0:0:0:0:0:0:0:1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),  # IPv4-mapped
        ("[::ffff:7f00:1]", "loopback"),
        ("[::127.0.0.1]", "loopback"),  # IPv4-compatible
        ("[2002:7f00:1::]", "loopback"),  # 6to4 around 127.0.0.1
        ("localhost", "loopback"),
        ("LocalHost", "loopback"),
        ("repo.localhost", "loopback"),
        ("ip6-localhost", "loopback"),
        ("localhost.localdomain", "loopback"),
        ("10.0.0.1", "private"),
        ("012.1", "private"),  # octal 10.0.0.1
        ("167772161", "private"),  # 10.0.0.1
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("0xc0a80101", "private"),  # 192.168.1.1
        ("[::ffff:192.168.1.1]", "private"),
        ("[64:ff9b::a00:1]", "private"),  # NAT64 around 10.0.0.1
        ("[64:ff9b:1::1]", "private"),  # local-use NAT64
        ("100.64.0.1", "carrier-grade NAT"),
        ("100.127.255.254", "carrier-grade NAT"),
        ("169.254.1.1", "link-local"),
        ("[fe80::1]", "link-local"),
        ("[febf::1]", "link-local"),
        ("[fc00::1]", "unique-local"),
        ("[fd12:3456::1]", "unique-local"),
        ("[fec0::1]", "site-local"),
        ("0.0.0.0", "unspecified"),
        ("0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("[::]", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("[ff02::1]", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.2.1", "reserved"),  # documentation
        ("198.18.0.1", "reserved"),  # benchmarking
        ("[2001:db8::1]", "reserved"),  # documentation
        ("[100::1]", "reserved"),  # discard
    ],
)
def test_refused_literal_hosts(host, cls):
    for url in (
        f"https://{host}/o/r.git",
        f"https://{host}:8443/o/r.git",
        f"ssh://git@{host}/o/r.git",
        f"git@{host}:o/r.git",
    ):
        with pytest.raises(PermanentError) as info:
            parse_remote(url, allow_local=False)
        err = info.value
        assert err.code == "repo_address_refused", url
        assert f" {cls} " in err.message, (url, err.message)
        assert "AGENTD_ALLOW_PRIVATE_REMOTES=1" in err.message
        # Allowed by the operator, or where local remotes are (tests, demo): accepted as is.
        assert parse_remote(url, allow_local=False, allow_private=True).url == url
        assert parse_remote(url, allow_local=True).url == url


@pytest.mark.parametrize(
    "host, meaning",
    [
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("[::ffff:10.1.2.3]", "10.1.2.3"),
    ],
)
def test_a_refusal_says_what_an_odd_literal_means(host, meaning):
    with pytest.raises(PermanentError, match=rf"\({meaning}\)"):
        parse_remote(f"https://{host}/o/r", allow_local=False)


@pytest.mark.parametrize(
    "host",
    [
        "169.254.169.254",
        "2852039166",
        "0251.0376.0251.0376",
        "[::ffff:169.254.169.254]",
        "169.254.170.2",
        "100.100.100.200",
        "168.63.129.16",
        "[fd00:ec2::254]",
        "metadata.google.internal",
    ],
)
def test_cloud_metadata_is_refused_even_where_private_remotes_are_allowed(host):
    for allow in (
        dict(allow_local=False),
        dict(allow_local=False, allow_private=True),
        dict(allow_local=True, allow_private=True),
    ):
        with pytest.raises(PermanentError, match=r"cloud metadata .*never allowed") as info:
            parse_remote(f"https://{host}/o/r.git", **allow)
        assert info.value.code == "repo_address_refused"


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "16843009",
        "140.82.112.3",
        "[2606:4700:4700::1111]",
        "[::ffff:8.8.8.8]",
        "github.com",
        "127.example.com",
        "0x7f.example.com",
        "1.2.3.4.5",
        "08.0.0.1",
        "localhost.example.com",
        "mylocalhost",
    ],
)
def test_public_literals_and_names_pass_parse_time(host):
    # Names are left to resolve_remote; 1.2.3.4.5 and 08.0.0.1 are no IPv4 literal to
    # inet_aton, curl or ssh either, so they are names too.
    assert parse_remote(f"https://{host}/o/r.git", allow_local=False).kind == "https"


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://[fe80::1%25eth0]/o/r", "zone id"),
        ("ssh://git@[fe80::1%25eth0]/o/r", "zone id"),
        ("https://[zzz]/o/r", "invalid host"),
        ("https://[v1.abc]/o/r", "invalid host"),
        ("git@[127.0.0.1:22]:o/r", "invalid host"),  # git would read host 127.0.0.1 port 22
        ("git@[1.2.3.4]:o/r", "invalid host"),
        ("https://git%25host/o/r", "invalid host"),  # a % outside brackets is no zone id
    ],
)
def test_malformed_literals_are_invalid_whatever_is_allowed(url, reason):
    for allow_local in (False, True):
        with pytest.raises(PermanentError, match=reason) as info:
            parse_remote(url, allow_local=allow_local, allow_private=True)
        assert info.value.code == "invalid_repo_url"


def test_ip_literal_reads_hosts_as_inet_aton_does():
    assert ip_literal("2130706433") == ipaddress.IPv4Address("127.0.0.1")
    assert ip_literal("1.2.3") == ipaddress.IPv4Address("1.2.0.3")
    assert ip_literal("[::1]") == ip_literal("::1") == ipaddress.IPv6Address("::1")
    assert ip_literal("4294967296") is None  # too large: a name
    assert ip_literal("github.com") is None and ip_literal("deadbeef") is None


def test_address_classes():
    cls = lambda a: address_class(ipaddress.ip_address(a))  # noqa: E731
    assert [cls(a) for a in ("8.8.8.8", "2a00:1450::1", "::ffff:1.1.1.1", "2002:808:808::")] == [None] * 4
    assert cls("172.15.255.255") is None and cls("172.32.0.0") is None  # just outside /12
    assert cls("100.63.255.255") is None and cls("100.128.0.0") is None
    assert cls("169.254.169.254") == cls("fd00:ec2::254") == "cloud metadata"


# -- clone and push time: names --------------------------------------------------------------


class FakeResolver(trio.abc.HostnameResolver):
    """Answers getaddrinfo from a table (host -> addresses, or an exception); records calls."""

    def __init__(self, table):
        self.table = table
        self.asked: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        self.asked.append(name)
        answer = self.table[name]
        if isinstance(answer, BaseException):
            raise answer
        if answer == "hang":
            await trio.sleep_forever()
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port), 0, 0))
            if ":" in a
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port)))
            for a in answer
        ]

    async def getnameinfo(self, sockaddr, flags):  # pragma: no cover - not used
        raise NotImplementedError


def use_resolver(table) -> FakeResolver:
    resolver = FakeResolver(table)
    trio.socket.set_custom_hostname_resolver(resolver)  # for this test's trio.run only
    return resolver


async def test_a_public_name_resolves_to_pinned_addresses():
    resolver = use_resolver({"git.example.com": ["140.82.112.3", "2606:50c0::1", "140.82.112.3"]})
    remote = parse_remote("https://git.example.com/o/r.git", allow_local=False)
    resolved = await resolve_remote(remote, allow_private=False)
    assert resolver.asked == ["git.example.com"]
    assert resolved == ResolvedRemote(
        remote, "git.example.com", 443, ("140.82.112.3", "2606:50c0::1"), pinned=True
    )
    # Scoped to the URL (beats any plain setting) and plain (for a URL git cannot normalise).
    pins = []
    for scope in ("http.https://git.example.com/o/r.git", "http"):
        pins += [
            "-c",
            f"{scope}.followRedirects=false",
            "-c",
            f"{scope}.curloptResolve=",
            "-c",
            f"{scope}.curloptResolve=git.example.com:443:140.82.112.3,[2606:50c0::1]",
        ]
    assert git_pin_config(resolved) == pins
    assert ssh_pin_options(resolved) == []


@pytest.mark.parametrize(
    "addresses, cls",
    [
        (["127.0.0.1"], "loopback"),
        (["140.82.112.3", "10.0.0.7"], "private"),  # one bad address among good ones is enough
        (["::1"], "loopback"),
        (["140.82.112.3", "fd00::5"], "unique-local"),
        (["::ffff:192.168.0.1"], "private"),
        (["fe80::1%eth0"], "link-local"),
        (["100.64.1.1"], "carrier-grade NAT"),
        (["0.0.0.0"], "unspecified"),
    ],
)
async def test_a_name_resolving_to_a_refused_address_is_refused(addresses, cls):
    use_resolver({"rebind.example.com": addresses})
    remote = parse_remote("https://rebind.example.com/o/r.git", allow_local=False)
    with pytest.raises(PermanentError) as info:
        await resolve_remote(remote, allow_private=False)
    assert info.value.code == "repo_address_refused"
    assert "repository host rebind.example.com resolves to" in info.value.message
    assert f" {cls} address" in info.value.message
    assert "allow_private_remotes = true" in info.value.message
    resolved = await resolve_remote(remote, allow_private=True)
    assert resolved.pinned and len(resolved.addresses) == len(addresses)


async def test_metadata_behind_a_name_is_refused_even_when_allowed():
    use_resolver({"imds.example.com": ["169.254.169.254"]})
    remote = parse_remote("ssh://git@imds.example.com/o/r.git", allow_local=True)
    with pytest.raises(PermanentError, match="cloud metadata address, which is never allowed"):
        await resolve_remote(remote, allow_private=True)


async def test_literals_and_local_remotes_need_no_lookup(tmp_path):
    resolver = use_resolver({})
    literal = parse_remote("http://127.0.0.1:9/o/r.git", allow_local=True)
    resolved = await resolve_remote(literal, allow_private=True)
    assert (resolved.addresses, resolved.pinned, resolved.port) == (("127.0.0.1",), False, 9)
    assert git_pin_config(resolved) == [
        "-c",
        "http.http://127.0.0.1:9/o/r.git.followRedirects=false",
        "-c",
        "http.followRedirects=false",
    ]
    # http:// exists only where local remotes are allowed, and so private addresses are too.
    assert (await resolve_remote(literal, allow_private=False)).addresses == ("127.0.0.1",)
    https = parse_remote("https://127.0.0.1:9/o/r.git", allow_local=True)
    with pytest.raises(PermanentError, match="loopback"):
        await resolve_remote(https, allow_private=False)  # parsed elsewhere with more allowed
    with pytest.raises(PermanentError, match="loopback name"):
        await resolve_remote(parse_remote("git@localhost:o/r", allow_local=True), allow_private=False)
    local = await resolve_remote(parse_remote(str(tmp_path / "r.git"), allow_local=True), allow_private=False)
    assert (local.addresses, git_pin_config(local), ssh_pin_options(local)) == ((), [], [])
    assert resolver.asked == []


async def test_resolution_failures_are_transient(autojump_clock):
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    use_resolver({"gone.example.com": unknown, "slow.example.com": "hang"})
    gone = parse_remote("https://gone.example.com/o/r.git", allow_local=False)
    with pytest.raises(
        TransientError,
        match=r"could not resolve the repository host "
        r"\(gone.example.com\): Name or service not known",
    ) as info:
        await resolve_remote(gone, allow_private=False)
    assert info.value.code == "repo_unresolved"
    slow = parse_remote("https://slow.example.com/o/r.git", allow_local=False)
    start = trio.current_time()
    with pytest.raises(TransientError, match="timed out after 5 s"):
        await resolve_remote(slow, allow_private=False, timeout=5)
    assert trio.current_time() - start == 5


async def test_ssh_pins_the_address_and_keeps_the_host_key_name():
    use_resolver({"git.example.com": ["140.82.112.3", "2606:50c0::1"]})
    scp = await resolve_remote(parse_remote("git@git.example.com:o/r.git", False), allow_private=False)
    assert ssh_pin_options(scp) == ["-o", "HostKeyAlias=git.example.com", "-o", "Hostname=140.82.112.3"]
    assert git_pin_config(scp) == []
    port = await resolve_remote(
        parse_remote("ssh://git@git.example.com:2222/o/r.git", False), allow_private=False
    )
    assert ssh_pin_options(port)[:2] == ["-o", "HostKeyAlias=[git.example.com]:2222"]


# -- the pins, with a real git -----------------------------------------------------------------


@pytest.fixture
def no_proxy(monkeypatch):
    # A proxy would get the made-up name instead of curl resolving it.
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def git_server(tmp_path, nursery, no_proxy):
    make_bare_repo(tmp_path / "served")
    server = GitHttpServer(tmp_path / "served")
    await nursery.start(server.serve)
    return server


@pytest.mark.slow
async def test_git_connects_to_the_pinned_address_only(git_server):
    port = git_server.url.rsplit(":", 1)[1]
    url = f"http://{HOST}:{port}/project.git"
    remote = parse_remote(url, allow_local=True)

    use_resolver({HOST: ["127.0.0.1"]})
    resolved = await resolve_remote(remote, allow_private=True)
    listed = await run_git(
        [*git_pin_config(resolved), "ls-remote", "--", url], remote=remote, op="ls-remote", timeout=30
    )
    assert b"refs/heads/main" in listed.stdout
    assert git_server.requests and all(r.status == 200 for r in git_server.requests)

    # Pinned elsewhere (127.0.0.2: nothing listens there), git goes there and nowhere else.
    seen = len(git_server.requests)
    use_resolver({HOST: ["127.0.0.2"]})
    elsewhere = await resolve_remote(remote, allow_private=True)
    failed = await run_git(
        [*git_pin_config(elsewhere), "ls-remote", "--", url],
        remote=remote,
        op="ls-remote",
        timeout=30,
        check=False,
    )
    assert failed.returncode != 0 and len(git_server.requests) == seen
    err = connection_error(failed.stderr, remote.host)
    assert type(err) is TransientError and err.code == "repo_unreachable"
    assert str(err) == f"could not reach the repository ({HOST}): could not connect"


class _Redirector(ThreadedHTTPFake):
    def __init__(self, target: str):
        self.target = target
        self.hits = 0


class _RedirectHandler(QuietHandler):
    def _handle(self) -> None:
        self.owner.hits += 1
        self.send_response(301)
        self.send_header("Location", self.owner.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()


_Redirector.handler_class = _RedirectHandler


@pytest.mark.slow
async def test_git_does_not_follow_a_redirect_to_another_host(git_server, nursery):
    redirector = _Redirector(git_server.url)  # 127.0.0.1, another port: another origin
    await nursery.start(redirector.serve)
    url = f"{redirector.url}/project.git"
    remote = parse_remote(url, allow_local=True)
    resolved = await resolve_remote(remote, allow_private=True)

    followed = await run_git(["ls-remote", "--", url], remote=remote, op="ls-remote", timeout=30)
    assert b"refs/heads/main" in followed.stdout and git_server.requests  # git's default

    git_server.requests.clear()
    refused = await run_git(
        [*git_pin_config(resolved), "ls-remote", "--", url],
        remote=remote,
        op="ls-remote",
        timeout=30,
        check=False,
    )
    assert refused.returncode != 0 and redirector.hits >= 2 and git_server.requests == []
    err = connection_error(refused.stderr, remote.host)
    assert type(err) is PermanentError and err.code == "repo_redirect"
    assert "redirect (HTTP 301)" in str(err)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
async def test_ssh_connects_to_the_pinned_address(no_proxy):
    # A bound socket that does not listen: connections to it are refused at once.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        url = f"ssh://git@{HOST}:{port}/o/r.git"
        remote = parse_remote(url, allow_local=False)
        use_resolver({HOST: ["127.0.0.1"]})
        resolved = await resolve_remote(remote, allow_private=True)
        ssh = [*shlex.split(ssh_command(None)), "-F", "/dev/null", *ssh_pin_options(resolved)]
        env = {
            "PATH": "/usr/bin:/bin",
            "LC_ALL": "C",
            "GIT_SSH_COMMAND": shlex.join(ssh),
            "GIT_ALLOW_PROTOCOL": "ssh",
            "HOME": "/nonexistent",
        }
        done = await trio.run_process(
            ["git", "ls-remote", "--", url],
            env=env,
            check=False,
            capture_stdout=True,
            capture_stderr=True,
            stdin=subprocess.DEVNULL,
        )
    stderr = done.stderr.decode()
    # ssh went to the pinned address (it never looked the made-up name up: that would fail).
    assert f"connect to host 127.0.0.1 port {port}: Connection refused" in stderr
    err = connection_error(stderr, remote.host)
    assert str(err) == f"could not reach the repository ({HOST}): connection refused"


# -- git's failures to connect, in clean words ---------------------------------------------------


@pytest.mark.parametrize(
    "stderr, cls, code, message",
    [
        (
            "fatal: unable to access 'https://h/r/': Could not resolve host: h",
            TransientError,
            "repo_unresolved",
            "could not resolve the repository host (h)",
        ),
        (
            (
                "ssh: Could not resolve hostname h: Temporary failure in name resolution\n"
                "fatal: Could not read from remote repository."
            ),
            TransientError,
            "repo_unresolved",
            "could not resolve the repository host (h)",
        ),
        (
            (
                "fatal: unable to access 'https://h/r/': Failed to connect to h port 443 after 0 ms: "
                "Couldn't connect to server"
            ),
            TransientError,
            "repo_unreachable",
            "could not reach the repository (h): could not connect",
        ),
        (
            "fatal: unable to access 'https://h/r/': Failed to connect to h port 443: Connection refused",
            TransientError,
            "repo_unreachable",
            "could not reach the repository (h): connection refused",
        ),
        (
            (
                "fatal: unable to access 'https://h/r/': Failed to connect to h port 443 after 130 s: "
                "Connection timed out"
            ),
            TransientError,
            "repo_unreachable",
            "could not reach the repository (h): connection timed out",
        ),
        (
            (
                "ssh: connect to host h port 22: Connection timed out\nfatal: Could not read from remote "
                "repository."
            ),
            TransientError,
            "repo_unreachable",
            "could not reach the repository (h): connection timed out",
        ),
        (
            "ssh: connect to host h port 22: No route to host",
            TransientError,
            "repo_unreachable",
            "could not reach the repository (h): no route to the host",
        ),
        (
            (
                "fatal: unable to access 'https://h/r/': Failed to connect to h port 443: Network is "
                "unreachable"
            ),
            TransientError,
            "repo_unreachable",
            "could not reach the repository (h): no route to the host",
        ),
        (
            "fatal: unable to access 'https://h/r/': The requested URL returned error: 301",
            PermanentError,
            "repo_redirect",
            "the repository server (h) answered with a redirect",
        ),
    ],
)
def test_connection_errors_in_clean_words(stderr, cls, code, message):
    err = connection_error(stderr, "h")
    assert type(err) is cls and err.code == code
    assert str(err).startswith(message)
    assert "fatal" not in str(err) and "port" not in str(err)


@pytest.mark.parametrize(
    "stderr",
    [
        "remote: Invalid username or password.\nfatal: Authentication failed for 'https://h/r/'",
        "fetch-pack: unexpected disconnect while reading sideband packet\nfatal: early EOF",
        "error: RPC failed; curl 28 Operation timed out after 300000 milliseconds with 0 bytes",
        "fatal: unable to access 'https://h/r/': The requested URL returned error: 503",
    ],
)
def test_other_failures_are_not_connection_errors(stderr):
    assert connection_error(stderr, "h") is None
