"""Bounces: delivery status notifications (RFC 3464) linked to the deliveries they are about.

The email adapter sends every message with a VERP envelope sender that carries the message's
token (``bounces+d12.abc…@domain``); ``dispatcher bounces`` receives the DSNs mailed there
(:mod:`workers.bounces`), :func:`channels.dsn.parse_report` reads them, and
:func:`record_report` marks a hard bounce's address dead and its delivery failed.
"""

from dispatcher.bounces.service import BOUNCED, BounceOutcome, BounceRefused, record_report

__all__ = ["BOUNCED", "BounceOutcome", "BounceRefused", "record_report"]
