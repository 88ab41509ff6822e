"""An SSH test board with deliberately slow kernels: the environment that makes its python wrap the runner.

``make_device(env=slow_board_env(runtime_site, slow_kernels))`` (tests/conftest.py) gives a real sshd board whose
runner, uploaded by a normal deploy, really sleeps in the kernels named (slow_site/sitecustomize.py, in the format
of slow_runner.py): a latency far above a loaded machine's noise, and known in advance.  The local equivalent is
``edgekit.optimize.devices.slow_local_device``.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

SLOW_SITE = Path(__file__).resolve().parent / "slow_site"


def slow_board_env(runtime_site: str | Path, slow_kernels: list[dict]) -> dict[str, str]:
    """The board's environment: the TVM runtime and slow_site on PYTHONPATH, the kernels in a JSON file.

    The file lives in a directory of its own that the board's login user can read (pytest's temporary
    directories are private to the user running the tests), removed when this process exits.
    """
    directory = Path(tempfile.mkdtemp(prefix="edgekit-slow-kernels-"))
    atexit.register(shutil.rmtree, directory, True)
    directory.chmod(0o755)
    path = directory / "slow_kernels.json"
    path.write_text(json.dumps(slow_kernels))
    path.chmod(0o644)
    return {"PYTHONPATH": f"{runtime_site}:{SLOW_SITE}", "EDGEKIT_SLOW_KERNELS_FILE": str(path)}
