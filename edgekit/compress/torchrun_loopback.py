"""torchrun with its rendezvous store on loopback only: ``python -m edgekit.compress.torchrun_loopback ARGS``.

torchrun's agent hosts a c10d TCPStore at --master-addr:--master-port for the ranks to meet, and TCPStore's
server listens on every interface whatever address it is given (checked with torch 2.13: ``*:PORT``).  This
wrapper binds that port on 127.0.0.1 first and hands the socket to a TCPStore (``master_listen_fd``) marked
multi-tenant, then runs torchrun's own ``main`` in this process: torchrun's static rendezvous asks for a
multi-tenant store on the same port, so it gets this one, and nothing listens beyond loopback.  ARGS are
torchrun's; --master-port must be absent (the wrapper picks a free one).
"""

from __future__ import annotations

import datetime
import socket
import sys

LOOPBACK = "127.0.0.1"


def main(argv: list[str]) -> None:
    import torch.distributed as dist
    from torch.distributed.run import main as torchrun_main

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    store = dist.TCPStore(LOOPBACK, port, None, True, datetime.timedelta(minutes=5), wait_for_workers=False,
                          multi_tenant=True, master_listen_fd=listener.fileno())
    listener.detach()  # the store owns the descriptor now, and closes it
    torchrun_main([f"--master-addr={LOOPBACK}", f"--master-port={port}", *argv])
    del store


if __name__ == "__main__":
    main(sys.argv[1:])
