"""Real Kafka clients against strata's Kafka listener (run by tests/kafka_clients.rs).

Usage: kafka_clients.py MODE BOOTSTRAP [ARGS]
  librdkafka    admin, idempotent produce with keys and headers, a consumer
                group that commits and resumes, two members splitting
                partitions, offsets for times (confluent-kafka = librdkafka)
  kafka-python  the same paths through an independent client
  exchange N    read N records of `from-grpc` and print them as JSON; then
                produce known records to `from-kafka` and print those
  produce N     acks=all produce of N records to `durable`; prints the
                acknowledged (partition, offset, value) as JSON
  verify        prints every record of `durable` as JSON
  tls DIR       over TLS with client certificates (DIR/ca.pem, client.pem,
                client.key; the certificate's CN is `auditor`): librdkafka
                with SASL_SSL as payments-svc produces to payments.eu and is
                refused `secret` and a wrong token; kafka-python with SSL as
                the CN auditor consumes them in group `audit` and commits
Each mode prints "<MODE> OK" last when every check held.
"""

import json
import sys
import threading
import time


def fail(why):
    print("FAILED:", why, flush=True)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


def librdkafka(bs):
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

    admin = AdminClient({"bootstrap.servers": bs})
    created = admin.create_topics(
        [NewTopic("orders", num_partitions=3, replication_factor=1, config={"retention.ms": "3600000"}),
         NewTopic("times", num_partitions=1, replication_factor=1)])
    for f in created.values():
        f.result(10)
    again = admin.create_topics([NewTopic("orders", num_partitions=3, replication_factor=1)])["orders"]
    try:
        again.result(10)
        fail("creating an existing topic succeeded")
    except Exception as e:
        check("TOPIC_ALREADY_EXISTS" in str(e), f"unexpected error for an existing topic: {e}")
    md = admin.list_topics(timeout=10)
    check({"orders", "times"} <= set(md.topics), f"topics listed: {list(md.topics)}")
    check(len(md.topics["orders"].partitions) == 3, "orders has 3 partitions")
    configs = admin.describe_configs([ConfigResource("topic", "orders")])
    for f in configs.values():
        entries = f.result(10)
        check(entries["retention.ms"].value == "3600000", f"retention.ms = {entries['retention.ms'].value}")

    # Idempotent producer (librdkafka's InitProducerId, epochs, sequences).
    producer = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 5})
    acked = []

    def delivered(err, msg):
        check(err is None, f"delivery failed: {err}")
        acked.append((msg.topic(), msg.partition(), msg.offset()))

    for i in range(300):
        producer.produce("orders", key=f"customer-{i % 10}", value=f"order-{i}",
                         headers=[("trace", f"t-{i}".encode())], on_delivery=delivered)
    base = 1_700_000_000_000
    for i in range(10):
        producer.produce("times", value=f"tick-{i}", timestamp=base + 10 * i, on_delivery=delivered)
    check(producer.flush(30) == 0, "produce did not finish")
    check(len(acked) == 310 and len(set(acked)) == 310, f"{len(acked)} acknowledged, {len(set(acked))} distinct")

    # A group member consumes half, commits exactly that, and leaves.
    def consumer(**extra):
        conf = {"bootstrap.servers": bs, "group.id": "billing", "auto.offset.reset": "earliest",
                "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
        conf.update(extra)
        return Consumer(conf)

    def consume(c, n, timeout=30):
        out, deadline = [], time.time() + timeout
        while len(out) < n and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            check(m.error() is None, f"consume error: {m.error()}")
            out.append(m)
        return out

    first = consumer()
    first.subscribe(["orders"])
    got = consume(first, 150)
    check(len(got) == 150, f"first member got {len(got)} of 150")
    for m in got:
        i = int(m.value().decode().split("-")[1])
        check(m.key() == f"customer-{i % 10}".encode(), f"key of {m.value()}: {m.key()}")
        check(m.headers() == [("trace", f"t-{i}".encode())], f"headers of {m.value()}: {m.headers()}")
    last = {}
    for m in got:
        last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
    first.commit(offsets=[TopicPartition("orders", p, o + 1) for p, o in last.items()], asynchronous=False)
    first.close()

    # The next member resumes exactly after the commit: the rest, once each.
    second = consumer()
    second.subscribe(["orders"])
    rest = consume(second, 150)
    seen = {(m.partition(), m.offset()) for m in got} | {(m.partition(), m.offset()) for m in rest}
    check(len(rest) == 150 and len(seen) == 300, f"resumed with {len(rest)}, {len(seen)} distinct of 300")
    extra = consume(second, 1, timeout=2)
    check(not extra, f"records read twice: {[(m.partition(), m.offset()) for m in extra]}")
    committed = second.committed([TopicPartition("orders", p) for p in range(3)], timeout=10)
    check(all(tp.offset == last[tp.partition] + 1 for tp in committed if tp.partition in last),
          f"committed: {committed}")
    for m in rest:
        last[m.partition()] = max(last.get(m.partition(), -1), m.offset())
    second.commit(offsets=[TopicPartition("orders", p, o + 1) for p, o in last.items()], asynchronous=False)

    # Two live members split the partitions between them.
    other = consumer()
    other.subscribe(["orders"])
    deadline = time.time() + 40
    while time.time() < deadline:
        second.poll(0.2)
        other.poll(0.2)
        a = {tp.partition for tp in second.assignment()}
        b = {tp.partition for tp in other.assignment()}
        if a and b and not (a & b) and (a | b) == {0, 1, 2}:
            break
    else:
        fail(f"two members did not split 3 partitions: {second.assignment()} / {other.assignment()}")
    groups = admin.list_groups(timeout=10) if hasattr(admin, "list_groups") else []
    if groups:
        check(any(g.id == "billing" for g in groups), f"groups listed: {groups}")
    second.close()
    other.close()

    # Offsets for times: the first record at or after a timestamp.
    c = Consumer({"bootstrap.servers": bs, "group.id": "times-reader"})
    found = c.offsets_for_times([TopicPartition("times", 0, base + 55)], timeout=10)
    check(found[0].offset == 6, f"offset for base+55: {found[0].offset}")
    lo, hi = c.get_watermark_offsets(TopicPartition("times", 0), timeout=10)
    check((lo, hi) == (0, 10), f"watermarks {lo}, {hi}")
    c.close()

    # CreatePartitions grows a topic; shrinking is refused with INVALID_PARTITIONS.
    from confluent_kafka.admin import NewPartitions
    for f in admin.create_partitions([NewPartitions("times", 3)]).values():
        f.result(10)
    check(len(admin.list_topics(timeout=10).topics["times"].partitions) == 3, "times grew to 3 partitions")
    try:
        list(admin.create_partitions([NewPartitions("times", 2)]).values())[0].result(10)
        fail("shrinking a topic succeeded")
    except Exception as e:
        check("INVALID_PARTITIONS" in str(e), f"unexpected error for a shrink: {e}")

    deleted = admin.delete_topics(["times"])
    for f in deleted.values():
        f.result(10)
    check("times" not in admin.list_topics(timeout=10).topics, "times still listed after delete")
    print("LIBRDKAFKA OK", flush=True)


def kafka_python(bs):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bs)
    admin.create_topics([NewTopic("events", 2, 1)])
    check("events" in admin.list_topics(), "events listed")
    producer = KafkaProducer(bootstrap_servers=bs, acks="all", enable_idempotence=True)
    futures = [producer.send("events", key=f"k{i % 3}".encode(), value=f"e{i}".encode(),
                             headers=[("id", f"evt-{i}".encode())]) for i in range(40)]
    producer.flush()
    metas = [f.get(timeout=10) for f in futures]
    check(len({(m.partition, m.offset) for m in metas}) == 40, "40 distinct offsets acknowledged")

    consumer = KafkaConsumer("events", bootstrap_servers=bs, group_id="audit", auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=10000)
    got = []
    for m in consumer:
        got.append(m)
        if len(got) == 40:
            break
    check(len(got) == 40, f"consumed {len(got)} of 40")
    for m in got:
        i = int(m.value.decode()[1:])
        check(m.key == f"k{i % 3}".encode() and m.headers == [("id", f"evt-{i}".encode())], f"record {m}")
    consumer.commit()
    desc = admin.describe_groups(["audit"])
    consumer.close()
    offsets = admin.list_group_offsets("audit")["audit"]
    total = sum(o.offset for o in offsets.values())
    check(total == 40, f"committed offsets add up to {total}, not 40: {offsets}")
    check(desc is not None, "describe_groups answered")
    admin.delete_topics(["events"])
    check("events" not in admin.list_topics(), "events deleted")
    print("KAFKA-PYTHON OK", flush=True)


def exchange(bs, n):
    from confluent_kafka import Consumer, Producer, TopicPartition

    c = Consumer({"bootstrap.servers": bs, "group.id": "exchange", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.assign([TopicPartition("from-grpc", 0, 0)])
    out, deadline = [], time.time() + 20
    while len(out) < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        out.append({"offset": m.offset(), "timestamp": m.timestamp()[1], "key": (m.key() or b"").hex(),
                    "value": (m.value() or b"").hex(),
                    "headers": [[k, (v or b"").hex()] for k, v in (m.headers() or [])]})
    c.close()
    print("READ " + json.dumps(out), flush=True)
    p = Producer({"bootstrap.servers": bs, "enable.idempotence": True})
    sent = []
    for i in range(5):
        key, value = bytes([i, 0, 255, i]), bytes(range(i * 10, i * 10 + 30))
        headers = [("bin", bytes([0, i, 254])), ("text", f"h{i}".encode())]
        p.produce("from-kafka", partition=0, key=key, value=value, headers=headers, timestamp=1_800_000_000_000 + i)
        sent.append({"key": key.hex(), "value": value.hex(), "timestamp": 1_800_000_000_000 + i,
                     "headers": [[k, v.hex()] for k, v in headers]})
    check(p.flush(20) == 0, "produce to from-kafka did not finish")
    print("SENT " + json.dumps(sent), flush=True)
    print("EXCHANGE OK", flush=True)


def produce(bs, n):
    from confluent_kafka import Producer

    acked, lock = [], threading.Lock()

    def delivered(err, msg):
        if err is None:
            with lock:
                acked.append([msg.partition(), msg.offset(), msg.value().decode()])

    p = Producer({"bootstrap.servers": bs, "acks": "all", "enable.idempotence": True, "linger.ms": 2})
    for i in range(n):
        p.produce("durable", value=f"durable-{i}", on_delivery=delivered)
        p.poll(0)
    p.flush(30)
    print("ACKED " + json.dumps(acked), flush=True)
    print("PRODUCE OK", flush=True)


def verify(bs):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bs, "group.id": "verify", "enable.auto.commit": False})
    parts = [TopicPartition("durable", p, 0) for p in range(2)]
    his = [c.get_watermark_offsets(TopicPartition("durable", p), timeout=10)[1] for p in range(2)]
    c.assign(parts)
    out, deadline = [], time.time() + 30
    while len(out) < sum(his) and time.time() < deadline:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        out.append([m.partition(), m.offset(), m.value().decode()])
    c.close()
    print("RECORDS " + json.dumps(out), flush=True)
    print("VERIFY OK", flush=True)


def tls(bs, d):
    from confluent_kafka import KafkaError, KafkaException, Producer
    from kafka import KafkaConsumer, TopicPartition

    ssl = {"ssl.ca.location": f"{d}/ca.pem", "ssl.certificate.location": f"{d}/client.pem",
           "ssl.key.location": f"{d}/client.key"}

    def producer(password):
        return Producer({"bootstrap.servers": bs, "security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
                         "sasl.username": "payments-svc", "sasl.password": password, "acks": "all",
                         "message.timeout.ms": 10000, **ssl})

    def send(p, topic, n):
        outcomes = []
        for i in range(n):
            p.produce(topic, value=f"tls-{i}".encode(), partition=0,
                      on_delivery=lambda err, msg: outcomes.append(err))
        p.flush(15)
        return outcomes

    p = producer("payments-svc-token")
    outcomes = send(p, "payments.eu", 10)
    check(outcomes == [None] * 10, f"10 produced over SASL_SSL: {outcomes}")
    refused = send(p, "secret", 1)
    check(len(refused) == 1 and refused[0] is not None
          and refused[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, f"secret refused: {refused}")
    # A wrong token: the SASL handshake fails, nothing is delivered.
    errors = []
    bad = Producer({"bootstrap.servers": bs, "security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN",
                    "sasl.username": "payments-svc", "sasl.password": "wrong", "message.timeout.ms": 5000,
                    "error_cb": lambda e: errors.append(e), **ssl})
    wrong = send(bad, "payments.eu", 1)
    check(len(wrong) == 1 and wrong[0] is not None, f"a wrong token delivered: {wrong}")
    check(any(e.code() == KafkaError._AUTHENTICATION for e in errors), f"authentication error reported: {errors}")

    consumer = KafkaConsumer(bootstrap_servers=bs, security_protocol="SSL", ssl_cafile=f"{d}/ca.pem",
                             ssl_certfile=f"{d}/client.pem", ssl_keyfile=f"{d}/client.key",
                             group_id="audit", auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=10000)
    consumer.assign([TopicPartition("payments.eu", 0)])
    got = []
    for m in consumer:
        got.append(m.value.decode())
        if len(got) == 10:
            break
    check(got == [f"tls-{i}" for i in range(10)], f"consumed over mTLS: {got}")
    consumer.commit()
    consumer.close()
    print("TLS OK", flush=True)


if __name__ == "__main__":
    mode, bs = sys.argv[1], sys.argv[2]
    if mode == "librdkafka":
        librdkafka(bs)
    elif mode == "kafka-python":
        kafka_python(bs)
    elif mode == "exchange":
        exchange(bs, int(sys.argv[3]))
    elif mode == "produce":
        produce(bs, int(sys.argv[3]))
    elif mode == "verify":
        verify(bs)
    elif mode == "tls":
        tls(bs, sys.argv[3])
    else:
        fail(f"unknown mode {mode}")
