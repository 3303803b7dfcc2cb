"""The client: submit and steer objects (:mod:`.client`), read them (:mod:`.reads`),
verify, export and import them (:mod:`.archive`)."""

from .archive import EXPORT_FORMAT as EXPORT_FORMAT
from .client import Client as Client

__all__ = ["EXPORT_FORMAT", "Client"]
