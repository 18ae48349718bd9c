"""Every table of the service, imported in one place for Alembic and the tests."""

from dispatcher.core.db import Base
from dispatcher.core.secrets import ServiceSecret
from dispatcher.tables.audiences import AudienceVersion, SavedAudience
from dispatcher.tables.audit import AuditEntry, AuditHead, AuditSeal
from dispatcher.tables.auth import ApiKey, PersonRole, Principal
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.tables.channel_accounts import AccountDeadAddress, ChannelAccount
from dispatcher.tables.channel_state import ChannelState
from dispatcher.tables.consent import OptOut
from dispatcher.tables.content import Template, TemplateVersion, Variant
from dispatcher.tables.deliveries import Attempt, Batch, Delivery, DeliveryTally, Lease
from dispatcher.tables.inbox import Device, InboxItem
from dispatcher.tables.recipients import Address, Recipient
from dispatcher.tables.units import Unit

__all__ = [
    "AccountDeadAddress",
    "Address",
    "ApiKey",
    "Attempt",
    "AudienceVersion",
    "AuditEntry",
    "AuditHead",
    "AuditSeal",
    "Base",
    "Batch",
    "Campaign",
    "ChannelAccount",
    "ChannelState",
    "Delivery",
    "DeliveryTally",
    "Device",
    "InboxItem",
    "Lease",
    "OptOut",
    "PersonRole",
    "Principal",
    "Recipient",
    "Run",
    "SavedAudience",
    "ServiceSecret",
    "Template",
    "TemplateVersion",
    "Unit",
    "Variant",
]
