#!/usr/bin/env python3
"""Query a running p2pd over its control socket from Python.

Shows that any language with a gRPC library can drive the daemon: the stubs are generated
from the repository's ``proto/p2p/control/v1/control.proto`` at run time (into a temporary
directory that is removed afterwards), then the script calls

* ``p2p.control.v1.ControlService/GetStatus`` and
* the standard health check ``grpc.health.v1.Health/Check``

over ``unix:<socket>`` and prints one JSON object on stdout::

    {"status": {"device_id": "...", "uptime_ms": 1234, ...}, "health": "SERVING"}

Every GetStatusResponse field appears under its proto name, defaults included. The exit
status is 0 when both calls succeed (whatever serving status the health check reports),
1 on a gRPC error (for example UNAVAILABLE when no daemon listens, or NOT_FOUND for a
health service name the daemon does not know) and 2 on a usage or set-up error (missing
Python modules, unreadable proto file). Errors are reported as one line on stderr.

Needs: ``pip install grpcio grpcio-tools grpcio-health-checking``
(see ``requirements.txt`` beside this script).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

# The gRPC core logs connection failures on stderr by itself; errors are reported here.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

PIP_HINT = "pip install grpcio grpcio-tools grpcio-health-checking"
PROG = Path(__file__).name

# Path of the control API's proto file, relative to the proto root (the protoc include dir).
CONTROL_PROTO = "p2p/control/v1/control.proto"
# The proto root of this repository: tests/python/control_client.py -> <repo>/proto.
DEFAULT_PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"

EXIT_RPC_ERROR = 1
EXIT_SETUP_ERROR = 2

try:
    import grpc
    from google.protobuf import json_format
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_tools import protoc
except ImportError as exc:  # pragma: no cover - depends on the environment
    print(f"{PROG}: missing Python module {exc.name!r}: {PIP_HINT}", file=sys.stderr)
    sys.exit(EXIT_SETUP_ERROR)


def fail(message: str, code: int) -> NoReturn:
    """Prints ``message`` as one line on stderr and exits with ``code``."""
    one_line = " ".join(message.split())
    print(f"{PROG}: {one_line}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Print the status and health of a running p2pd as one JSON object.",
    )
    parser.add_argument(
        "--socket", required=True, type=Path, help="path of the daemon's control socket"
    )
    parser.add_argument(
        "--proto-root",
        type=Path,
        default=DEFAULT_PROTO_ROOT,
        help=f"directory holding {CONTROL_PROTO} (default: %(default)s)",
    )
    parser.add_argument(
        "--health-service",
        default="",
        metavar="NAME",
        help='service name for the health check (default: "" = the whole server), '
        "e.g. p2p.control.v1.ControlService",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="deadline of each call (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def generate_stubs(proto_root: Path, out_dir: Path) -> tuple[ModuleType, ModuleType]:
    """Runs protoc on the control proto into ``out_dir``; returns (messages, services)."""
    proto_file = proto_root / CONTROL_PROTO
    if not proto_file.is_file():
        fail(f"{proto_file} not found (use --proto-root)", EXIT_SETUP_ERROR)
    # The well-known types (google/protobuf/*.proto) ship with grpcio-tools.
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            CONTROL_PROTO,
        ]
    )
    if rc != 0:
        fail(f"protoc failed on {proto_file} (exit {rc})", EXIT_SETUP_ERROR)

    # Make every generated directory a regular package, so that nothing installed under the
    # same top-level name (`p2p`) can shadow it.
    package = Path(CONTROL_PROTO).parent  # p2p/control/v1
    for d in [package, *package.parents]:
        if d != Path("."):
            (out_dir / d / "__init__.py").touch()

    module = CONTROL_PROTO.removesuffix(".proto").replace("/", ".")
    sys.path.insert(0, str(out_dir))
    try:
        importlib.invalidate_caches()
        messages = importlib.import_module(f"{module}_pb2")
        services = importlib.import_module(f"{module}_pb2_grpc")
    except Exception as exc:  # e.g. generated code newer than the installed runtime
        fail(f"cannot import the generated stubs: {exc} (try: {PIP_HINT} --upgrade)",
             EXIT_SETUP_ERROR)
    finally:
        sys.path.remove(str(out_dir))
    return messages, services


# protobuf >= 5.26 calls the "print fields left at their default" option
# always_print_fields_with_no_presence; older releases called it including_default_value_fields.
_PRINT_DEFAULTS = (
    "always_print_fields_with_no_presence"
    if "always_print_fields_with_no_presence"
    in inspect.signature(json_format.MessageToDict).parameters
    else "including_default_value_fields"
)


def message_to_dict(message: Any) -> dict[str, Any]:
    """All fields of ``message`` by proto name, fields left at their default included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, **{_PRINT_DEFAULTS: True}
    )


class CallFailed(Exception):
    """A gRPC call failed; carries the method name and the status code."""

    def __init__(self, method: str, err: grpc.RpcError) -> None:
        code = err.code() if isinstance(err, grpc.Call) else None
        details = err.details() if isinstance(err, grpc.Call) else str(err)
        self.code = code.name if code is not None else "UNKNOWN"
        super().__init__(f"{method}: {self.code}: {details or '(no details)'}")


def call(method: str, rpc: Any, request: Any, timeout: float) -> Any:
    """Invokes ``rpc(request)`` with a deadline; turns a gRPC error into CallFailed."""
    try:
        return rpc(request, timeout=timeout)
    except grpc.RpcError as err:
        raise CallFailed(method, err) from None


def query(socket: Path, pb2: ModuleType, pb2_grpc: ModuleType, health_service: str,
          timeout: float) -> dict[str, Any]:
    """Calls GetStatus and Health/Check; returns the JSON object to print."""
    # gRPC core sends the socket path as the HTTP/2 `:authority` of a unix: target; the h2
    # server under tonic rejects that as malformed (RST_STREAM PROTOCOL_ERROR, seen as
    # INTERNAL). "localhost" is what tonic's own client and grpc-go send over a Unix socket.
    options = [("grpc.default_authority", "localhost")]
    with grpc.insecure_channel(f"unix:{socket.absolute()}", options=options) as channel:
        control = pb2_grpc.ControlServiceStub(channel)
        status = call("p2p.control.v1.ControlService/GetStatus", control.GetStatus,
                      pb2.GetStatusRequest(), timeout)

        health = health_pb2_grpc.HealthStub(channel)
        check = call(f"grpc.health.v1.Health/Check(service={health_service!r})", health.Check,
                     health_pb2.HealthCheckRequest(service=health_service), timeout)

    status_dict = message_to_dict(status)
    # The JSON mapping of proto3 writes 64-bit integers as strings; this is a count of ms.
    status_dict["uptime_ms"] = int(status_dict["uptime_ms"])
    return {
        "status": status_dict,
        "health": health_pb2.HealthCheckResponse.ServingStatus.Name(check.status),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="p2pd-stubs-") as tmp:
        pb2, pb2_grpc = generate_stubs(args.proto_root.resolve(), Path(tmp))
    try:
        result = query(args.socket, pb2, pb2_grpc, args.health_service, args.timeout)
    except CallFailed as err:
        fail(f"unix:{args.socket}: {err}", EXIT_RPC_ERROR)
    json.dump(result, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
