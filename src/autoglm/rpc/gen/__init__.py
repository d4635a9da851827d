"""Code generated from ``rpc/proto`` by ``scripts/gen_grpc.sh``; do not edit by hand."""
