"""Deploy over SSH and measure on the device: ``deploy_model`` (several devices), ``deploy_to_host`` (one),
``RemoteHost`` (paramiko, strict host keys, deadlines everywhere), ``check_device`` / ``setup_device``.

Nothing here imports torch, tvm or paramiko at import time.
"""

from edgekit.deploy.checks import check_device, setup_device
from edgekit.deploy.deploy import (
    DeviceEntry,
    DeviceResult,
    FleetResult,
    deploy_model,
    deploy_to_host,
    read_inventory,
    rollback_host,
)
from edgekit.deploy.remote import RemoteHost
from edgekit.targets import MeasureProtocol  # the protocol deploy_model(measure=...) takes

__all__ = ["RemoteHost", "MeasureProtocol", "DeviceEntry", "DeviceResult", "FleetResult", "deploy_model",
           "deploy_to_host", "read_inventory", "rollback_host", "check_device", "setup_device"]
