"""The delivery engine: how a message goes from an API call to an audited attempt.

Read the modules in the order a message travels through them:

1. **API → rows.** A use case (launching a run, a transactional message) commits its rows and
   asks for a job through :mod:`.jobs` (``jobs.plan_run``, ``jobs.send_batch``: the queue comes
   from the work's priority), which goes to the broker only once that transaction commits.
   :mod:`.planner` turns a run's audience into *batch rows* (:mod:`.batches`), one keyset page
   per transaction and one batch per channel, each holding its recipients and their deliveries'
   reserved ids, and queued as one job carrying its id; opt-outs and dead addresses become
   ``skipped`` rows at once. No pending delivery row is written: each delivery's row is written
   once, by the worker that sends it, with its outcome.
2. **Batch → claim.** A worker's actor hands the job to :mod:`.batch`, which takes the batch
   top to bottom: :mod:`.claim` takes the batch row with one conditional UPDATE and a lease
   (:mod:`.leases` renews it while the worker lives), or the rows of work that has rows
   (retries, fallback hops, one-off messages); :mod:`.render` makes each message from the
   run's frozen template version. :mod:`.work` holds what the batch carries between steps.
3. **Batch → adapter.** :mod:`.send` sends the messages concurrently on the process's event
   loop (:mod:`.loop`) through the channel adapters, each behind a slot of the shared rate
   limit (:mod:`.ratelimit`), with the quick retries of :mod:`.retry`; adapters keep their
   state in :mod:`.channel_state`.
4. **Adapter → attempt.** :mod:`.record` writes every outcome and one attempt row per try in
   one transaction (bulk statements from :mod:`.bulk`: a batch row's deliveries *inserted*
   with their outcomes by ``COPY`` or one multi-row INSERT, the batch closed), the retry
   decision of :mod:`.retry` applied, retries and fallback hops queued after its commit, one
   audit entry per batch. Until then, readers find a batch's deliveries through it
   (:mod:`.batches`).
5. **Recovery.** :mod:`.recovery` holds the sweeper's queries: batches and rows whose job
   Redis lost, a dead worker's lease, a stalled planner, a run nobody closed.

Why batch rows rather than pending rows: a pending row was inserted, updated when claimed and
updated with its outcome, each time rewriting every index entry on PostgreSQL; a batch row is
one small write per page, and each delivery is one insert (plus its attempt row). Work that
needs later writes anyway (retries, hops, one-off messages that need their row at acceptance
for their idempotency key) keeps the row path. The design is told in docs/architecture.md.

:mod:`.backends` makes, once per process, the broker, the batch markers and the rate limiter
(in Redis, or in the process for ``dispatcher dev``). The engine is used by the domain
packages (campaigns launch runs through it) and by ``workers`` (thin actors, the sweeper and
scheduler loops); it imports neither.
"""
