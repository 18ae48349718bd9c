"""Campaigns, one module per job: ``lifecycle`` (the state machine), ``approval`` (two people,
what is frozen, withdrawals), ``previews`` (what an approver reads), ``launching`` (a run and
the queueing of its planning), ``firing`` (what the scheduler starts) and ``messages`` (the
transactional message API)."""
