"""A gRPC client that knows nothing of Vigie: it learns a server's services and messages by server
reflection alone (v1alpha, as grpcio-reflection, Postman and older grpcurl speak it), then calls
methods with requests written as JSON and prints what it got.

Used by the end-to-end test `grpc_faces` (tests/tests/e2e/grpc_faces.rs); grpcio and
grpcio-reflection come from PyPI (pinned in deploy/install-tools.sh).

    python grpc_reflection_client.py ADDRESS < plan.json

plan.json: {"token": "... or null", "calls": [{"method": "pkg.Service/Method", "request": {...}}]}
Prints one JSON document: {"services": [...], "calls": [{"method", "code", "response" | "message"}]}.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def main() -> None:
    address = sys.argv[1]
    plan = json.load(sys.stdin)
    channel = grpc.insecure_channel(address)
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    services = sorted(database.get_services())
    metadata = [("authorization", f"Bearer {plan['token']}")] if plan.get("token") else []
    calls = []
    for call in plan["calls"]:
        service_name, method_name = call["method"].split("/")
        method = pool.FindServiceByName(service_name).FindMethodByName(method_name)
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        request = json_format.ParseDict(call["request"], request_class())
        path = f"/{service_name}/{method_name}"
        try:
            if method.server_streaming:
                stub = channel.unary_stream(
                    path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
                )
                # The first message of a stream (a live stream does not end by itself).
                stream = stub(request, metadata=metadata, timeout=10)
                response = next(iter(stream))
                stream.cancel()
            else:
                stub = channel.unary_unary(
                    path, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString
                )
                response = stub(request, metadata=metadata, timeout=10)
            calls.append(
                {
                    "method": call["method"],
                    "code": "OK",
                    "response": json_format.MessageToDict(response, preserving_proto_field_name=True),
                }
            )
        except grpc.RpcError as error:
            calls.append({"method": call["method"], "code": error.code().name, "message": error.details()})
    json.dump({"services": services, "calls": calls}, sys.stdout)


if __name__ == "__main__":
    main()
