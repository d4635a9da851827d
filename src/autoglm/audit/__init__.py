"""The tamper-evident audit chain: records, their HMAC chain, the writer, and the check.

``Record`` is one audit record; ``AuditLog`` the one append point (``append`` durable
now, ``submit`` group-committed, ``close`` flushes); ``Folder`` folds floods of
identical refusals; ``verify`` checks the chain offline and names the first bad seq.
"""

from autoglm.audit.fold import Folder
from autoglm.audit.keys import AuditPaths
from autoglm.audit.record import Record
from autoglm.audit.verify import Fault, Report, verify
from autoglm.audit.writer import AuditLog

__all__ = ["AuditLog", "AuditPaths", "Fault", "Folder", "Record", "Report", "verify"]
