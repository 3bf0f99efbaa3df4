// KafkaJS (a pure-JavaScript Kafka client, independent of librdkafka) against
// strata's Kafka listener; run by tests/kafka_clients.rs. Prints KAFKAJS OK.
const { Kafka, logLevel } = require('kafkajs');
const bs = process.argv[2];
const kafka = new Kafka({ clientId: 'kjs', brokers: [bs], logLevel: logLevel.WARN });
// A client that waits forever must fail the test, not hang it.
setTimeout(() => { console.error('FAILED: not done within 60 s'); process.exit(1); }, 60000);
(async () => {
  const admin = kafka.admin(); await admin.connect();
  await admin.createTopics({ topics: [{ topic: 'js', numPartitions: 2 }] });
  if (!(await admin.listTopics()).includes('js')) throw new Error('js not listed');
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 }); await producer.connect();
  const r = await producer.send({ topic: 'js', acks: -1, messages: Array.from({length: 20}, (_, i) => ({ key: 'k' + (i % 3), value: 'v' + i, headers: { id: 'e' + i } })) });
  if (r.length === 0) throw new Error('no produce results');
  const consumer = kafka.consumer({ groupId: 'jsg' }); await consumer.connect();
  await consumer.subscribe({ topic: 'js', fromBeginning: true });
  const seen = [];
  await new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ message }) => {
        const i = Number(message.value.toString().slice(1));
        if (message.key.toString() !== 'k' + (i % 3) || message.headers.id.toString() !== 'e' + i) {
          throw new Error('record ' + i + ' came back different');
        }
        seen.push(i);
        if (seen.length === 20) resolve();
      },
    });
  });
  if (new Set(seen).size !== 20) throw new Error('consumed ' + JSON.stringify(seen));
  await consumer.disconnect(); await producer.disconnect();
  const offsets = await admin.fetchOffsets({ groupId: 'jsg', topics: ['js'] });
  const committed = offsets[0].partitions.reduce((s, p) => s + Math.max(0, Number(p.offset)), 0);
  if (committed !== 20) throw new Error('committed offsets add up to ' + committed + ', not 20: ' + JSON.stringify(offsets));
  await admin.deleteTopics({ topics: ['js'] });
  if ((await admin.listTopics()).includes('js')) throw new Error('js still listed after delete');
  await admin.disconnect();
  console.log('KAFKAJS OK');
  process.exit(0);
})().catch((e) => { console.error('FAILED', e); process.exit(1); });
