"""Secret key rotation: every stored secret re-encrypted with the newest key, and the check at
start that the configured keys decrypt what is stored (issue 22).

Every column of encrypted secrets is named once, in ``SECRET_COLUMNS``; the sweep
(``rotate_keys``, ``agentctl rotate-keys``) and the check at start go through that list and
nothing else. A new secret column is one more line there.

The store keeps a second key check beside the cluster's (``secrets.KEY_CHECK``, the newest
key of the daemons sharing a store): ``KEYS_IN_USE``, a known text encrypted with the oldest
key stored secrets may still need. It is made with the oldest configured key when the store
first gets one, and made again with the newest only by a sweep that left no secret behind.
So removing a key before the sweep re-encrypted what it encrypted is refused at the next
start, on every store, and after the sweep it is not.

Why this is cheap at start, whatever the number of rows: one read of the stored check and the
most recent ``SAMPLE`` secrets of each column decrypted (a few Fernet decryptions, tens of
microseconds each); the rows are counted only to word a refusal. The check catches keys that
changed altogether (the sample, and the stored check) and an old key dropped too early (the
stored check); it does not prove every row decrypts, which only the sweep does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from .config import Settings
from .errors import ConfigError
from .secrets import KEY_CHECK, SecretBox, key_source
from .store import Store
from .store.secret_queries import SecretColumn

log = logging.getLogger(__name__)

#: Every column of encrypted secrets, once.
SECRET_COLUMNS: tuple[SecretColumn, ...] = (
    SecretColumn("users", "id", "github_token_enc", "users' GitHub tokens"),
    SecretColumn("notify_targets", "id", "secret_enc", "webhook signing secrets and push subscription keys"),
    SecretColumn("cluster_values", "name", "value", "the web push (VAPID) key", only_key="vapid_private_key"),
)
#: Where the store keeps the check made with the oldest key its secrets may need.
KEYS_IN_USE = "secret_keys_in_use"
#: Secrets of each column decrypted at start.
SAMPLE = 8
#: Secrets read and re-encrypted at once by the sweep (one read, one short write).
BATCH = 200


@dataclass
class ColumnRotation:
    """What the sweep did to one column."""

    what: str
    rotated: int = 0  # re-encrypted with the newest key
    current: int = 0  # already encrypted with it
    changed_meanwhile: int = 0  # written anew while the sweep ran (with the newest key)
    undecryptable: int = 0  # encrypted with none of the configured keys


@dataclass
class RotationReport:
    columns: dict[str, ColumnRotation] = field(default_factory=dict)
    #: Whether the stored checks now say the newest key alone suffices (no secret left behind).
    old_keys_retirable: bool = False


async def rotate_keys(store: Store, box: SecretBox, *, node: str = "agentctl") -> RotationReport:
    """Re-encrypt every stored secret of ``SECRET_COLUMNS`` with ``box``'s newest key, in
    batches, each row only if it still holds what was read (a sign-in meanwhile keeps its new
    token); then, if every secret decrypted, make the stored checks again with the newest key,
    so that the older keys may go. Idempotent: a second run rotates nothing.

    Cancellation: stops between batches; what was swapped stays swapped (each row is whole,
    old or new), the checks are not refreshed: run it again.
    """
    report = RotationReport()
    for column in SECRET_COLUMNS:
        report.columns[f"{column.table}.{column.column}"] = await _rotate_column(store, box, column)
    if any(counts.undecryptable for counts in report.columns.values()):
        return report
    for name in (KEYS_IN_USE, KEY_CHECK) if store.shared else (KEYS_IN_USE,):
        await _refresh_check(store, box, name, node)
    report.old_keys_retirable = True
    return report


async def _rotate_column(store: Store, box: SecretBox, column: SecretColumn) -> ColumnRotation:
    counts = ColumnRotation(column.what)
    after: Any = None
    while page := await store.secret_page(column, after, BATCH):
        after = page[-1][0]
        # Fernet work off the Trio thread: a batch is a few milliseconds of CPU.
        changes, current, lost = await trio.to_thread.run_sync(_rotated, box, page)
        counts.current += current
        counts.undecryptable += lost
        if changes:
            swapped = await store.swap_secrets(column, changes)
            counts.rotated += swapped
            counts.changed_meanwhile += len(changes) - swapped
    if counts.undecryptable:
        log.warning("key rotation: %d of %s cannot be decrypted", counts.undecryptable, column.what)
    return counts


Swap = tuple[Any, bytes, bytes]  # (key, old secret, new secret)


def _rotated(box: SecretBox, page: list[tuple[Any, bytes]]) -> tuple[list[Swap], int, int]:
    """The page's rows to re-encrypt, with their new secrets; how many are current, lost."""
    changes: list[Swap] = []
    current = lost = 0
    for key, token in page:
        verdict = box.made_with_newest(token)
        if verdict is None:
            lost += 1
        elif verdict:
            current += 1
        else:
            changes.append((key, token, box.rotate(token)))
    return changes, current, lost


async def _refresh_check(store: Store, box: SecretBox, name: str, node: str) -> None:
    """Make the check ``name`` again with the newest key, unless it already is."""
    stored = await store.cluster_value(name, box.key_check(), node=node)
    if box.reads_key_check(stored) is not True:
        await store.swap_cluster_value(name, stored, box.key_check(), node=node)


async def check_stored_secrets(store: Store, box: SecretBox, settings: Settings, node: str) -> None:
    """Refuse (``ConfigError``) to go on with keys that cannot decrypt what ``store`` holds,
    saying which key source, how many secrets and what to do; on every store. See the
    module's docstring for what it looks at and why that is enough at start."""
    stored = await store.cluster_value(KEYS_IN_USE, box.key_check(oldest=True), node=node)
    undecryptable = 0
    for column in SECRET_COLUMNS:
        sample = await store.newest_secrets(column, SAMPLE)
        undecryptable += sum(box.made_with_newest(token) is None for token in sample)
    if box.reads_key_check(stored) is not None and not undecryptable:
        return
    counts = {column.what: await store.count_secrets(column) for column in SECRET_COLUMNS}
    if not any(counts.values()):
        # Nothing stored needs the old keys: start over with these.
        await store.swap_cluster_value(KEYS_IN_USE, stored, box.key_check(oldest=True), node=node)
        log.warning("the secret keys changed; no stored secret needed the old ones")
        return
    held = ", ".join(f"{count} {what}" for what, count in counts.items() if count)
    raise ConfigError(
        f"the secret keys from {key_source(settings)} cannot decrypt the secrets this store holds "
        f"({held}): the key that encrypted them is missing. Put it back there (after the newest "
        "key), start agentd, run `agentctl rotate-keys`, and only then remove it. If that key is "
        "lost for good, so is what it encrypted: see the README (Secret keys)"
    )
