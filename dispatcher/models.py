"""Every table of the service, imported in one place for Alembic and the tests."""

from dispatcher.audiences.models import AudienceVersion, SavedAudience
from dispatcher.audit.models import AuditEntry, AuditHead, AuditSeal
from dispatcher.auth.models import ApiKey, Principal
from dispatcher.campaigns.models import Campaign, Run
from dispatcher.channel_state import ChannelState
from dispatcher.consent.models import OptOut
from dispatcher.content.models import Template, TemplateVersion, Variant
from dispatcher.db import Base
from dispatcher.deliveries.models import Attempt, Delivery, Lease
from dispatcher.inbox.models import Device, InboxItem
from dispatcher.recipients.models import Address, Recipient
from dispatcher.secrets import ServiceSecret

__all__ = [
    "Address",
    "ApiKey",
    "Attempt",
    "AudienceVersion",
    "AuditEntry",
    "AuditHead",
    "AuditSeal",
    "Base",
    "Campaign",
    "ChannelState",
    "Delivery",
    "Device",
    "InboxItem",
    "Lease",
    "OptOut",
    "Principal",
    "Recipient",
    "Run",
    "SavedAudience",
    "ServiceSecret",
    "Template",
    "TemplateVersion",
    "Variant",
]
