"""The gRPC contract from Python: a grpcio client generated from the proto at
test time talks to a running broker (address in argv[1]). The README's own
example is run as pasted by tests/python_client.rs."""
import os
import sys
import tempfile

from grpc_tools import protoc

proto_root = sys.argv[2]
out = tempfile.mkdtemp()
rc = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}",
                  os.path.join(proto_root, "strata/v1/broker.proto")])
assert rc == 0, "stub generation failed"
sys.path.insert(0, out)

import grpc  # noqa: E402
from strata.v1 import broker_pb2 as pb, broker_pb2_grpc as rpc  # noqa: E402

broker = rpc.BrokerStub(grpc.insecure_channel(sys.argv[1]))
topic = broker.CreateTopic(pb.CreateTopicRequest(name="policy.updated", partitions=2))
assert topic.partitions == 2 and topic.config["flush.policy"] == "always", topic

r = broker.Produce(pb.ProduceRequest(topic="policy.updated", partition=1,
                                     records=[pb.Record(key=b"policy-7", value=b'{"v": 3}',
                                                        headers={"source": b"py"})]))
assert r.results[0].partition == 1 and r.results[0].base_offset == 0, r

page = broker.Fetch(pb.FetchRequest(topic="policy.updated", partition=1,
                                    **{"from": pb.Position(boundary=pb.EARLIEST)}, max_wait_ms=1000))
assert [(x.offset, x.key, x.value, x.headers["source"]) for x in page.records] == [(0, b"policy-7", b'{"v": 3}', b"py")], page
assert page.high_watermark == 1

stream = broker.Subscribe(pb.SubscribeRequest(topic_pattern="policy.*",
                                              **{"from": pb.Position(boundary=pb.EARLIEST)}), timeout=20)
got = []
for msg in stream:
    got.extend((x.topic, x.partition, x.value) for x in msg.records)
    if got:
        break
assert got == [("policy.updated", 1, b'{"v": 3}')], got

try:
    broker.Fetch(pb.FetchRequest(topic="missing", partition=0))
    raise AssertionError("fetch of a missing topic must fail")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e

print("PYTHON CLIENT OK")
