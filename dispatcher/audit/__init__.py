"""A tamper-evident audit log.

Every entry's hash covers the previous entry's hash and its own content, so changing,
removing or reordering an entry breaks the chain from there on. Staff actions (keys,
approvals, cancellations, setting changes) are one entry each. Every writer that creates a
delivery or changes its outcome names it, in its state, in an entry of the same transaction; a
worker's batch entry also holds a digest of the batch's attempt rows (see ``coverage``). Seals
put a keyed MAC on the chain's head and are written to a witness outside the database.
``dispatcher audit verify`` walks it all.
"""

from dispatcher.audit.chain import GENESIS, Draft, append, draft, record, seal
from dispatcher.audit.coverage import (
    CANCELLED,
    PLANNED,
    VERSION,
    attempt_digest,
    batch_draft,
    batch_draft_of,
    change_deliveries,
    deliveries_drafts,
    delivery_state,
    name_deliveries,
    restate,
    state_columns,
)
from dispatcher.audit.verify import Problem, VerifyReport, verify

__all__ = [
    "CANCELLED",
    "GENESIS",
    "PLANNED",
    "VERSION",
    "Draft",
    "Problem",
    "VerifyReport",
    "append",
    "attempt_digest",
    "batch_draft",
    "batch_draft_of",
    "change_deliveries",
    "deliveries_drafts",
    "delivery_state",
    "draft",
    "name_deliveries",
    "record",
    "restate",
    "seal",
    "state_columns",
    "verify",
]
