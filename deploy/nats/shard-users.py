#!/usr/bin/env python3
"""Adds a NATS user per shard of a domain service to authorization.conf.

A shard (vigie-lighting --shard est --communes 34129,34057) connects as its own NATS user,
named after its unit (lighting-est), with its domain's permissions narrowed to what is its own:
it publishes only its communes' events (lighting.34129.>, lighting.34057.>), reads back its
events with its own consumer (outbox-lighting-est), writes its own state bucket
(VIGIE_STATE_LIGHTING_EST) and its own lease key (lighting-est), and receives replies on its own
inbox (_INBOX_lighting-est). Its password comes from VIGIE_NATS_LIGHTING_EST_PASSWORD.

The domain's user block in authorization.conf stays the one place that spells the permissions;
this script derives each shard's from it.

usage: shard-users.py authorization.conf <domain>:<shard>:<insee>[,<insee>...] ... > out.conf
"""

import re
import sys

SHARD = re.compile(r"^[a-z0-9]{1,16}$")
# A commune id as proto::ids::CommuneId takes it (an INSEE code, or another territory's code).
INSEE = re.compile(r"^[A-Z0-9]{1,16}$")


def domain_block(conf: str, domain: str) -> str:
    """The `{ user: <domain>, ... }` block of the users list, braces included."""
    start = conf.find(f"      user: {domain}, password:")
    if start < 0:
        sys.exit(f"shard-users: no user {domain!r} in the configuration")
    start = conf.rfind("{", 0, start)
    depth = 0
    for i in range(start, len(conf)):
        if conf[i] == "{":
            depth += 1
        elif conf[i] == "}":
            depth -= 1
            if depth == 0:
                return conf[start : i + 1]
    sys.exit(f"shard-users: the block of user {domain!r} is not closed")


def shard_block(block: str, domain: str, shard: str, communes: list[str]) -> str:
    unit = f"{domain}-{shard}"
    env = unit.upper().replace("-", "_")
    replacements = [
        (
            f"user: {domain}, password: $VIGIE_NATS_{domain.upper()}_PASSWORD",
            f'user: "{unit}", password: $VIGIE_NATS_{env}_PASSWORD',
        ),
        (f'"{domain}.>"', ", ".join(f'"{domain}.{c}.>"' for c in communes)),
        # It reads back its own communes' events only: one consumer filter per commune.
        (
            f'"$JS.API.CONSUMER.CREATE.VIGIE_EVENTS.outbox-{domain}.{domain}.>"',
            ", ".join(f'"$JS.API.CONSUMER.CREATE.VIGIE_EVENTS.outbox-{unit}.{domain}.{c}.>"' for c in communes),
        ),
        (f'outbox-{domain}"', f'outbox-{unit}"'),
        (f"VIGIE_STATE_{domain.upper()}", f"VIGIE_STATE_{env}"),
        (f'$KV.VIGIE_LEASES.{domain}"', f'$KV.VIGIE_LEASES.{unit}"'),
        (f"_INBOX_{domain}.>", f"_INBOX_{unit}.>"),
    ]
    for old, new in replacements:
        if old not in block:
            sys.exit(f"shard-users: {old!r} is not in user {domain!r}'s block")
        block = block.replace(old, new)
    return block


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    conf = open(sys.argv[1], encoding="utf-8").read()
    added = []
    units, served = set(), {}
    for spec in sys.argv[2:]:
        parts = spec.split(":")
        if len(parts) != 3:
            sys.exit(f"shard-users: {spec!r} is not <domain>:<shard>:<communes>")
        domain, shard, communes = parts[0], parts[1], parts[2].split(",")
        if not SHARD.match(shard):
            sys.exit(f"shard-users: shard name {shard!r}: 1 to 16 lowercase letters and digits")
        bad = [c for c in communes if not INSEE.match(c)]
        if bad:
            sys.exit(f"shard-users: {bad[0]!r} is not a commune id (1 to 16 upper-case letters and digits)")
        if (domain, shard) in units:
            sys.exit(f"shard-users: shard {shard!r} of {domain} is named twice")
        units.add((domain, shard))
        for c in communes:
            if (domain, c) in served:
                sys.exit(f"shard-users: commune {c} is in shards {served[(domain, c)]!r} and {shard!r} of {domain}")
            served[(domain, c)] = shard
        block = shard_block(domain_block(conf, domain), domain, shard, communes)
        added.append(f"    # Shard {shard} of {domain} ({', '.join(communes)}), from shard-users.py.\n    {block}\n")
    end = conf.rfind("  ]")
    if end < 0:
        sys.exit("shard-users: no users list in the configuration")
    sys.stdout.write(conf[:end] + "".join(added) + conf[end:])


if __name__ == "__main__":
    main()
