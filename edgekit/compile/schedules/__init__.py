"""Default CPU schedules: edgekit's rules for the kernels TVM 0.27 leaves as naive loops.

TVM 0.27's llvm pipeline (relax/backend/cpu_generic) schedules nothing: every conv2d and
matmul reaches codegen as the loop nest LegalizeOps wrote.  These rules are DLight-style
``ScheduleRule`` s applied to each fused PrimFunc after legalization and fusion, before
lowering (see edgekit.compile.build.cpu_pipeline).  Tuning records, where a database has
them, are applied first and win; the rules cover the rest.  Every kernel that no rule
schedules is recorded in the ScheduleLog, which the compile report names.

One module per kernel family, each exposing ``rules(cpu) -> list[ScheduleRule]``; the
order below is the order they are tried in (most specific first).
"""

from edgekit.compile.schedules.apply import ApplySchedules, ScheduleLog, schedule_rules
from edgekit.compile.schedules.target_info import CpuInfo, cpu_info

__all__ = ["ApplySchedules", "CpuInfo", "ScheduleLog", "cpu_info", "schedule_rules"]
