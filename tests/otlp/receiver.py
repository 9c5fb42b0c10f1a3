#!/usr/bin/env python3
"""An OTLP/HTTP metrics receiver for the tests: decodes every POST to /v1/metrics
with the official OpenTelemetry protobuf definitions (the `opentelemetry-proto`
package) and appends what it found, one JSON line per request, to the file given.
Usage: receiver.py PORT OUT.jsonl
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

PORT = int(sys.argv[1])
OUT = sys.argv[2]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as error:  # a body that is not the protobuf: refuse it
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(error).encode())
            return
        record = {
            "path": self.path,
            "content_type": self.headers.get("content-type"),
            "request": MessageToDict(
                request,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
        }
        with open(OUT, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        response = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
