"""Decodes a GTFS-Realtime FeedMessage read on stdin with Google's published bindings (PyPI
`gtfs-realtime-bindings`, generated from the official gtfs-realtime.proto) and prints it as JSON
with the specification's field names. The end-to-end tests use it to check that Vigie's feed is
what any GTFS-Realtime consumer reads."""

import json
import sys

from google.protobuf.json_format import MessageToDict
from google.transit import gtfs_realtime_pb2

feed = gtfs_realtime_pb2.FeedMessage()
feed.ParseFromString(sys.stdin.buffer.read())
json.dump(MessageToDict(feed, preserving_proto_field_name=True), sys.stdout)
