"""Generated form of confidence.proto (see scripts/gen_proto.sh)."""
