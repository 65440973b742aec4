#!/usr/bin/env sh
# Regenerate the Python stubs of the agent protocol from taskplane/proxy/confidence.proto.
#
# Usage (from the repository root, with the dev extras installed):
#     scripts/gen_proto.sh
#
# The stubs live in taskplane/proxy/_pb and are committed, so users never need
# grpcio-tools. protoc writes a top-level import into the service stub; it is
# rewritten to a package-relative one so `taskplane.proxy._pb` imports work.
set -eu
cd "$(dirname "$0")/.."
out=taskplane/proxy/_pb
python -m grpc_tools.protoc \
    --proto_path=taskplane/proxy \
    --python_out="$out" \
    --pyi_out="$out" \
    --grpc_python_out="$out" \
    taskplane/proxy/confidence.proto
sed -i.bak 's/^import confidence_pb2 as confidence__pb2$/from . import confidence_pb2 as confidence__pb2/' \
    "$out/confidence_pb2_grpc.py"
rm -f "$out/confidence_pb2_grpc.py.bak"
[ -f "$out/__init__.py" ] || printf '"""Generated stubs of confidence.proto (see scripts/gen_proto.sh)."""\n' > "$out/__init__.py"
echo "regenerated $out"
