"""Validates snapshots of Vigie's three GTFS-Realtime feeds with PyPI `gtfs-rt-validator`
(MobilityData's rule set, in Python), reading the static GTFS archive once for all of them.

    gtfs_rt_validate.py GTFS_ZIP SNAPSHOT_DIR...

Each snapshot directory holds `trip-updates.pb`, `vehicle-positions.pb`, `alerts.pb` and `at`
(the snapshot's time, POSIX seconds: the validator's clock, so that a replay of the past is judged
at its own time). The three feeds are one cycle, so the cross-feed rules run. Each report is
written to the snapshot's `report/report.json`, as the validator's command line writes it."""

import datetime as dt
import sys
from pathlib import Path

from gtfs_rt_validator.api import Mode, Request, prepare_feed, resolve_roles, validate

gtfs, snapshots = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
feed = prepare_feed(gtfs, mode=Mode.MODERN)
for snapshot in snapshots:
    at = dt.datetime.fromtimestamp(int((snapshot / "at").read_text()), tz=dt.UTC)
    inputs = resolve_roles(
        {
            "tu": str(snapshot / "trip-updates.pb"),
            "vp": str(snapshot / "vehicle-positions.pb"),
            "sa": str(snapshot / "alerts.pb"),
        }
    )
    result = validate(Request(mode=Mode.MODERN, gtfs=feed, inputs=inputs, at=at))
    result.write(snapshot / "report")
