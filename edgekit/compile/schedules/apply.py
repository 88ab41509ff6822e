"""The pass that applies edgekit's CPU schedule rules, and the log of what it did."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgekit.compile.tvm_env import import_tvm


@dataclass
class ScheduleLog:
    """Which rule scheduled each kernel, which came from the tuning database, which no rule took."""

    by_rule: dict[str, list[str]] = field(default_factory=dict)   # rule name -> kernel names
    tuned: list[str] = field(default_factory=list)                # scheduled by tuning records
    unscheduled: list[str] = field(default_factory=list)          # naive loops: named, never silent
    rule_errors: dict[str, str] = field(default_factory=dict)     # kernel -> "Rule: error" of a rule that raised

    def to_dict(self) -> dict:
        return {"by_rule": {k: sorted(v) for k, v in sorted(self.by_rule.items())},
                "tuned": sorted(self.tuned), "unscheduled": sorted(self.unscheduled),
                "rule_errors": dict(sorted(self.rule_errors.items()))}


def schedule_rules(target) -> list:
    """The rules for ``target``, in the order they are tried."""
    from edgekit.compile.schedules import conv, depthwise, elementwise, int8, matmul, reduction, winograd
    from edgekit.compile.schedules.target_info import cpu_info

    cpu = cpu_info(target)
    return [*winograd.rules(cpu), *int8.rules(cpu), *depthwise.rules(cpu), *conv.rules(cpu), *matmul.rules(cpu), *reduction.rules(cpu),
            *elementwise.rules(cpu)]


def ApplySchedules(target, log: ScheduleLog | None = None):  # noqa: N802 (a pass, named like TVM's)
    """A module pass: each PrimFunc not yet scheduled gets the first rule that accepts it."""
    tvm = import_tvm()
    from tvm import tirx

    from edgekit.compile.schedules._common import debug_schedules

    rules = schedule_rules(target)
    log = log if log is not None else ScheduleLog()

    @tvm.transform.module_pass(opt_level=0, name="EdgekitApplySchedules")
    def _apply(mod, _ctx):
        updated = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            name = gvar.name_hint
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs and func.attrs["tirx.is_scheduled"]:
                log.tuned.append(name)
                continue
            for rule in rules:
                try:
                    sch = rule.apply(func, target, False)
                except Exception as exc:  # noqa: BLE001  (a primitive refusing an unforeseen kernel, e.g. col2im)
                    # The kernel falls to the next rule, or stays a named naive loop: a build never
                    # fails for a schedule.  EDGEKIT_SCHEDULE_DEBUG=1 re-raises, for rule authors.
                    if debug_schedules():
                        raise
                    lines = str(exc).strip().splitlines() or [type(exc).__name__]
                    log.rule_errors[name] = f"{type(rule).__name__}: {lines[-1][:200]}"
                    continue
                if sch is None:
                    continue
                sch = sch[0] if isinstance(sch, list) else sch
                updated[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                log.by_rule.setdefault(type(rule).__name__, []).append(name)
                break
            else:
                log.unscheduled.append(name)
        if not updated:
            return mod
        # A copy: assigning into ``mod`` would change the caller's module in place (tuning keeps
        # its tasks' modules and looks records up by them after measuring the default schedule).
        mod = mod.clone()
        for gvar, func in updated.items():
            mod[gvar] = func
        return mod

    return _apply
