"""Every write to the notification outbox: recording, delivering, retrying, sweeping.

The outbox knows no domain: consultations and messaging build their payloads and dedupe
keys in their own ``notifications`` modules and call ``notification_record``; they plug
"is this still worth sending?" checks into workers.relevance.

* preferences: muted kinds and quiet hours;
* outbox: ``notification_record`` in the caller's transaction, enqueue on commit;
* delivery: claim, send, record, retry (the exactly-once argument is in its docstring);
* sweeper: recover rows whose worker died, enqueue due rows, resend failed ones.
"""

from workers.services.delivery import (
    DUE_TOLERANCE,
    DeliveryOutcome,
    notification_deliver,
    retry_delay,
)
from workers.services.outbox import notification_record
from workers.services.preferences import notification_preferences_update, quiet_hours_end
from workers.services.sweeper import SweepResult, notifications_resend, outbox_sweep

__all__ = [
    "DUE_TOLERANCE",
    "DeliveryOutcome",
    "SweepResult",
    "notification_deliver",
    "notification_preferences_update",
    "notification_record",
    "notifications_resend",
    "outbox_sweep",
    "quiet_hours_end",
    "retry_delay",
]
