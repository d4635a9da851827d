"""gRPC beside REST: ``autoglm serve --grpc-port N``.

``proto/autoglm/v1/inference.proto`` is the published API; ``gen/`` holds the Python code
generated from it by ``scripts/gen_grpc.sh`` (clients import
``autoglm.rpc.gen.autoglm.v1.inference_pb2`` and ``inference_pb2_grpc``); ``server.py`` is
the adapter over the inference service, ``convert.py`` the message <-> OpenAI JSON
mapping, ``tls.py`` TLS on the gRPC port.
"""
