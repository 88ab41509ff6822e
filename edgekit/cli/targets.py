"""``edgekit targets list|show``: what can be built for, without importing torch or TVM."""

from __future__ import annotations

from edgekit.cli.output import add_json_option, add_targets_dir_option, emit_json
from edgekit.targets import list_targets, load_target


def register(subparsers) -> None:
    parser = subparsers.add_parser("targets", help="list and inspect target profiles")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="one line per profile")
    add_json_option(listing)
    add_targets_dir_option(listing)
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="everything a profile says")
    show.add_argument("name", help="profile name or path of a .toml file")
    add_json_option(show)
    add_targets_dir_option(show)
    show.set_defaults(func=run_show)


def run_list(args) -> int:
    profiles = [load_target(name, args.targets_dir) for name in list_targets(args.targets_dir)]
    if args.json:
        emit_json([p.to_dict() for p in profiles])
        return 0
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        print(f"{p.name:<{width}}  {p.kind:<6}  {p.arch:<7}  {p.description}")
    return 0


def run_show(args) -> int:
    profile = load_target(args.name, args.targets_dir)
    if args.json:
        emit_json(profile.to_dict())
        return 0
    d = profile.to_dict()
    for key in ("name", "description", "kind", "arch", "triple", "elf_machine", "cross_compiler", "cuda_arch",
                "source"):
        if d[key] is not None:
            print(f"{key:<15} {d[key]}")
    print(f"{'tvm_target':<15} {d['tvm_target']}")
    print(f"{'runtime':<15} {d['runtime']}")
    print(f"{'measure':<15} {d['measure']}")
    return 0
