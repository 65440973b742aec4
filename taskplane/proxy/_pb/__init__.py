"""Generated stubs of confidence.proto (see scripts/gen_proto.sh)."""
