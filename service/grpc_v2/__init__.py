"""KServe's Open Inference Protocol over gRPC: ``grpc_predict_v2.proto`` and the code generated from it.

Regenerate (grpcio-tools, from the repository root, so that the generated imports name this
package)::

    python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. service/grpc_v2/grpc_predict_v2.proto

The messages live in protobuf's default descriptor pool under the package ``inference``, as
Triton's do: a process can import these or ``tritonclient.grpc``'s, not both.
"""
