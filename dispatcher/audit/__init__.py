"""A tamper-evident audit log.

Every entry's hash covers the previous entry's hash and its own content, so changing,
removing or reordering an entry breaks the chain from there on. Staff actions (keys,
approvals, cancellations, setting changes) are one entry each; a batch's delivery attempts
are one entry holding a digest of those attempt rows, so editing an attempt is caught too.
Seals, written periodically, put a keyed MAC on the chain's head. ``dispatcher audit verify``
walks it all.
"""

from dispatcher.audit.chain import (
    GENESIS,
    Draft,
    Problem,
    VerifyReport,
    append,
    attempt_digest,
    attempts_draft,
    draft,
    record,
    seal,
    verify,
)

__all__ = [
    "GENESIS",
    "Draft",
    "Problem",
    "VerifyReport",
    "append",
    "attempt_digest",
    "attempts_draft",
    "draft",
    "record",
    "seal",
    "verify",
]
