"""The checked-in stubs are exactly what protoc makes of c2c.proto."""

from pathlib import Path

from protos import regenerate


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    for fresh in regenerate.generate(tmp_path):
        checked_in = regenerate.REPO_ROOT / "protos" / fresh.name
        assert checked_in.read_text() == fresh.read_text(), (
            f"{checked_in.name} drifted from c2c.proto: run `python -m protos.regenerate`"
        )


def test_stubs_import_as_a_package() -> None:
    from protos import c2c_pb2, c2c_pb2_grpc

    assert c2c_pb2.DESCRIPTOR.package == "c2c.v1"
    assert hasattr(c2c_pb2_grpc, "SharerStub") and hasattr(c2c_pb2_grpc, "ReceiverStub")
    assert c2c_pb2.Mode.Name(0) == "MODE_UNSPECIFIED"
    assert c2c_pb2.Codec.Name(0) == "CODEC_UNSPECIFIED"
