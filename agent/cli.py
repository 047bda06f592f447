"""`failoverctl`: the admin's command for failover-agent."""

from __future__ import annotations

import argparse
import sys

from agent import config as configmod


def check_config(path: str) -> int:
    try:
        cfg = configmod.load(path)
    except configmod.ConfigError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 2
    v = cfg.vrrp
    print(f"{path}: valid (VRRPv{v.version} VRID {v.vrid} on {v.interface}, priority {v.priority}, "
          f"VIPs {', '.join(str(x) for x in v.vips)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failoverctl", description="Inspect and steer failover-agent.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    p.add_argument("file", nargs="?", default=str(configmod.DEFAULT_PATH))
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
