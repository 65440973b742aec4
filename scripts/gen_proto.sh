#!/usr/bin/env sh
# Regenerate the Python stubs of the agent protocol from taskplane/proxy/confidence.proto.
#
# Usage (from the repository root):
#     scripts/gen_proto.sh
#
# The stubs live in taskplane/proxy/_pb and are committed, so users never need
# grpcio-tools. They are generated with an old grpcio-tools on purpose
# (GRPCIO_TOOLS below, in a throwaway virtualenv): stubs run on any runtime at
# least as new as the generator, so old stubs keep the grpcio/protobuf floors in
# pyproject.toml low (grpcio-tools 1.62 emits protobuf 4.25 code and no grpcio
# version check). Newer generators would raise both floors to their own release.
# protoc writes a top-level import into the service stub; it is rewritten to a
# package-relative one so `taskplane.proxy._pb` imports work.
set -eu
cd "$(dirname "$0")/.."
GRPCIO_TOOLS="${GRPCIO_TOOLS:-grpcio-tools==1.62.3}"
PYTHON="${PYTHON:-python3}"
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$PYTHON" -m venv "$venv"
"$venv/bin/pip" install --quiet "$GRPCIO_TOOLS"
out=taskplane/proxy/_pb
"$venv/bin/python" -m grpc_tools.protoc \
    --proto_path=taskplane/proxy \
    --python_out="$out" \
    --pyi_out="$out" \
    --grpc_python_out="$out" \
    taskplane/proxy/confidence.proto
sed -i.bak 's/^import confidence_pb2 as confidence__pb2$/from . import confidence_pb2 as confidence__pb2/' \
    "$out/confidence_pb2_grpc.py"
rm -f "$out/confidence_pb2_grpc.py.bak"
[ -f "$out/__init__.py" ] || printf '"""Generated stubs of confidence.proto (see scripts/gen_proto.sh)."""\n' > "$out/__init__.py"
echo "regenerated $out with $GRPCIO_TOOLS"
