//! Security through gRPC: with `[security]` on, a call without credentials
//! is UNAUTHENTICATED, a principal without a grant gets PERMISSION_DENIED
//! naming principal, operation and resource (every method of the service,
//! through the authorization table), granted calls work and lists hide what
//! the caller may not describe; TLS with client certificates (mTLS, the CN
//! is the principal) made with rcgen; hostile TLS input leaves the broker
//! serving others; a reload of the file applies to the next call.

mod common;

use std::path::Path;
use std::time::Duration;

use strata::listener::grpc::service::METHOD_OPERATIONS;
use strata::proto::{self, broker_client::BrokerClient};
use strata::security::acl::{token_sha256, AclEntry, UserEntry};
use strata::security::tls::TlsFiles;
use strata::security::SecurityFile;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Client = BrokerClient<InterceptedService<Channel, strata::cli::Auth>>;

fn acl(principal: &str, operations: &[&str], topics: &[&str], groups: &[&str]) -> AclEntry {
    let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
    AclEntry { principal: principal.into(), operations: v(operations), topics: v(topics), groups: v(groups) }
}

fn security() -> SecurityFile {
    let user = |name: &str| UserEntry { name: name.into(), token_sha256: token_sha256(&format!("{name}-token")) };
    SecurityFile {
        anonymous: None,
        users: vec![user("admin"), user("payments-svc"), user("nobody")],
        acl: vec![
            acl("admin", &["all"], &["*"], &["*"]),
            acl("payments-svc", &["produce"], &["payments.*"], &[]),
            acl("auditor", &["consume", "group"], &["payments.*"], &["audit"]),
        ],
    }
}

async fn client(url: &str, token: Option<&str>) -> Client {
    let channel = Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap();
    BrokerClient::with_interceptor(channel, strata::cli::Auth::bearer(token).unwrap())
}

fn topic_req(name: &str) -> proto::CreateTopicRequest {
    proto::CreateTopicRequest { name: name.into(), partitions: 1, config: Default::default() }
}

fn produce_req(topic: &str) -> proto::ProduceRequest {
    proto::ProduceRequest { topic: topic.into(), records: vec![common::record("", "v")], ..Default::default() }
}

#[test]
fn every_method_of_the_service_is_in_the_authorization_table() {
    let proto =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/strata/v1/broker.proto")).unwrap();
    let service = &proto[proto.find("service Broker").unwrap()..];
    let service = &service[..service.find("\n}").unwrap()];
    let methods: Vec<&str> = service
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim())
        .collect();
    assert!(methods.len() >= 30, "{methods:?}");
    for m in &methods {
        assert!(METHOD_OPERATIONS.iter().any(|(name, _)| name == m), "{m} is not in METHOD_OPERATIONS");
    }
    assert_eq!(methods.len(), METHOD_OPERATIONS.len(), "the table names only methods of the service");
}

/// Calls every method of the service as `c`; returns each one's code.
async fn call_every_method(c: &mut Client) -> Vec<(&'static str, Code)> {
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut out = Vec::new();
    macro_rules! call {
        ($name:expr, $e:expr) => {
            out.push(($name, code($e.await.map(|_| ()))));
        };
    }
    call!("CreateTopic", c.create_topic(topic_req("payments.x")));
    call!("DeleteTopic", c.delete_topic(proto::DeleteTopicRequest { name: "payments.eu".into() }));
    call!("ListTopics", c.list_topics(proto::ListTopicsRequest::default()));
    call!("DescribeTopic", c.describe_topic(proto::DescribeTopicRequest { name: "payments.eu".into() }));
    call!(
        "AlterTopicConfig",
        c.alter_topic_config(proto::AlterTopicConfigRequest { name: "payments.eu".into(), config: Default::default() })
    );
    call!(
        "CreatePartitions",
        c.create_partitions(proto::CreatePartitionsRequest { name: "payments.eu".into(), partitions: 2 })
    );
    call!("InitProducer", c.init_producer(proto::InitProducerRequest {}));
    call!("Produce", c.produce(produce_req("payments.eu")));
    call!("ProduceStream", async {
        let mut s = c.produce_stream(futures::stream::iter([produce_req("payments.eu")])).await?.into_inner();
        match s.message().await? {
            Some(r) if r.error_code != 0 => Err(tonic::Status::new(Code::from(r.error_code), r.error_message)),
            _ => Ok(()),
        }
    });
    let fetch = proto::FetchRequest { topic: "payments.eu".into(), ..Default::default() };
    call!("Fetch", c.fetch(fetch));
    call!("Subscribe", async {
        let r = proto::SubscribeRequest { topic_pattern: "payments.eu".into(), ..Default::default() };
        c.subscribe(r).await.map(|_| ())
    });
    call!(
        "ListOffsets",
        c.list_offsets(proto::ListOffsetsRequest { topic: "payments.eu".into(), ..Default::default() })
    );
    let g = || "billing".to_string();
    call!(
        "JoinGroup",
        c.join_group(proto::JoinGroupRequest { group: g(), topic_pattern: "payments.*".into(), ..Default::default() })
    );
    call!("Heartbeat", c.heartbeat(proto::HeartbeatRequest { group: g(), ..Default::default() }));
    call!("LeaveGroup", c.leave_group(proto::LeaveGroupRequest { group: g(), ..Default::default() }));
    call!("CommitOffsets", c.commit_offsets(proto::CommitOffsetsRequest { group: g(), ..Default::default() }));
    call!(
        "FetchCommittedOffsets",
        c.fetch_committed_offsets(proto::FetchCommittedOffsetsRequest { group: g(), ..Default::default() })
    );
    call!("ListGroups", c.list_groups(proto::ListGroupsRequest::default()));
    call!("DescribeGroup", c.describe_group(proto::DescribeGroupRequest { group: g() }));
    call!(
        "ResetGroupOffsets",
        c.reset_group_offsets(proto::ResetGroupOffsetsRequest { group: g(), ..Default::default() })
    );
    call!("DeleteGroup", c.delete_group(proto::DeleteGroupRequest { group: g() }));
    call!(
        "ShareFetch",
        c.share_fetch(proto::ShareFetchRequest {
            group: g(),
            topic_pattern: "payments.*".into(),
            ..Default::default()
        })
    );
    call!("Acknowledge", c.acknowledge(proto::AcknowledgeRequest { group: g(), ..Default::default() }));
    call!("ShareSubscribe", async {
        let first =
            proto::ShareSubscribeRequest { group: g(), topic_pattern: "payments.*".into(), ..Default::default() };
        let mut s = c.share_subscribe(futures::stream::iter([first])).await?.into_inner();
        tokio::time::timeout(Duration::from_millis(300), s.message()).await.unwrap_or(Ok(None)).map(|_| ())
    });
    call!("AlterShareGroup", c.alter_share_group(proto::AlterShareGroupRequest { group: g(), ..Default::default() }));
    call!("DescribeShareGroup", c.describe_share_group(proto::DescribeShareGroupRequest { group: g() }));
    call!("ListShareGroups", c.list_share_groups(proto::ListShareGroupsRequest::default()));
    call!("DeleteShareGroup", c.delete_share_group(proto::DeleteShareGroupRequest { group: g() }));
    call!(
        "RedriveDeadLetters",
        c.redrive_dead_letters(proto::RedriveDeadLettersRequest { group: g(), ..Default::default() })
    );
    let rule = proto::CreateAlertRuleRequest {
        name: "storm".into(),
        topic_pattern: "payments.*".into(),
        threshold: 5,
        window_ms: 60_000,
        ..Default::default()
    };
    call!("CreateAlertRule", c.create_alert_rule(rule));
    call!("ListAlertRules", c.list_alert_rules(proto::ListAlertRulesRequest::default()));
    call!("DescribeAlertRule", c.describe_alert_rule(proto::DescribeAlertRuleRequest { name: "storm".into() }));
    call!("DeleteAlertRule", c.delete_alert_rule(proto::DeleteAlertRuleRequest { name: "storm".into() }));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_refuses_the_unauthenticated_and_the_ungranted_and_serves_the_granted() {
    let dir = tempfile::tempdir().unwrap();
    let config = strata::config::BrokerConfig { security: Some(security()), ..common::config(dir.path()) };
    let server = strata::server::start(config).await.unwrap();
    let url = server.url();
    let mut admin = client(&url, Some("admin-token")).await;
    admin.create_topic(topic_req("payments.eu")).await.unwrap();
    admin.create_topic(topic_req("secret")).await.unwrap();

    // No credentials, and a token nobody has: every method.
    for token in [None, Some("wrong")] {
        let mut anon = client(&url, token).await;
        let codes = call_every_method(&mut anon).await;
        assert_eq!(codes.len(), METHOD_OPERATIONS.len(), "every method is called");
        for (m, code) in codes {
            assert_eq!(code, Code::Unauthenticated, "{m} with token {token:?}");
        }
    }
    let e = client(&url, None).await.list_topics(proto::ListTopicsRequest::default()).await.unwrap_err();
    assert!(e.message().contains("--token"), "says what to do: {}", e.message());

    // A user no ACL names: denied everywhere; lists come back empty.
    let mut nobody = client(&url, Some("nobody-token")).await;
    for (m, code) in call_every_method(&mut nobody).await {
        let lists = ["ListTopics", "ListGroups", "ListShareGroups", "ListAlertRules"];
        let expected = if lists.contains(&m) { Code::Ok } else { Code::PermissionDenied };
        assert_eq!(code, expected, "{m} as nobody");
    }
    let listed = nobody.list_topics(proto::ListTopicsRequest::default()).await.unwrap().into_inner();
    assert!(listed.topics.is_empty(), "{listed:?}");

    // The grants: produce to payments.*, nothing else.
    let mut svc = client(&url, Some("payments-svc-token")).await;
    svc.produce(produce_req("payments.eu")).await.unwrap();
    let e = svc.produce(produce_req("secret")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    for word in ["payments-svc", "produce", "secret"] {
        assert!(e.message().contains(word), "{word} in {}", e.message());
    }
    let e = svc.fetch(proto::FetchRequest { topic: "payments.eu".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "produce does not grant consume");
    let listed = svc.list_topics(proto::ListTopicsRequest::default()).await.unwrap().into_inner();
    assert_eq!(
        listed.topics.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["payments.eu"],
        "produce implies describe"
    );

    // The admin may do everything.
    for (m, code) in call_every_method(&mut admin).await {
        assert!(!matches!(code, Code::Unauthenticated | Code::PermissionDenied), "{m} as admin: {code:?}");
    }
    server.shutdown().await.unwrap();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate with
/// CN `cn`, written as PEM files in `dir`.
fn make_certs(dir: &Path, cn: &str) -> TlsFiles {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "strata test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params.distinguished_name.push(DnType::CommonName, cn);
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca_cert.pem());
    write("server.pem", server.pem());
    write("server.key", server_key.serialize_pem());
    write("client.pem", client.pem());
    write("client.key", client_key.serialize_pem());
    TlsFiles { cert: dir.join("server.pem"), key: dir.join("server.key"), client_ca: Some(dir.join("ca.pem")) }
}

/// A broker config with [`security`] and mTLS (certificates from
/// [`make_certs`] in `dir`, the client's CN `auditor`), data in `dir/data`.
fn tls_config(dir: &Path) -> strata::config::BrokerConfig {
    let tls = make_certs(dir, "auditor");
    strata::config::BrokerConfig { security: Some(security()), tls: Some(tls), ..common::config(&dir.join("data")) }
}

async fn tls_client(url: &str, dir: &Path, with_cert: bool) -> Result<Client, tonic::transport::Error> {
    tls_client_as(url, dir, with_cert, None).await
}

/// [`tls_client`] sending `token` too (the token names the principal).
async fn tls_client_as(
    url: &str,
    dir: &Path,
    with_cert: bool,
    token: Option<&str>,
) -> Result<Client, tonic::transport::Error> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("ca.pem"))).domain_name("localhost");
    if with_cert {
        tls = tls.identity(Identity::from_pem(read("client.pem"), read("client.key")));
    }
    let channel =
        Channel::from_shared(url.replace("http://", "https://")).unwrap().tls_config(tls).unwrap().connect().await?;
    Ok(BrokerClient::with_interceptor(channel, strata::cli::Auth::bearer(token).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_makes_the_certificate_cn_the_principal_and_hostile_tls_input_hurts_no_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config =
        strata::config::BrokerConfig { request_read_timeout: Duration::from_secs(2), ..tls_config(dir.path()) };
    let server = strata::server::start(config).await.unwrap();
    let url = server.url();

    // Hostile input first: plaintext gRPC, a truncated ClientHello, and a
    // client that connects and never finishes the handshake.
    let plain = Channel::from_shared(url.clone()).unwrap().connect().await;
    if let Ok(channel) = plain {
        let mut c = BrokerClient::new(channel);
        assert!(c.list_topics(proto::ListTopicsRequest::default()).await.is_err(), "plaintext to the TLS port");
    }
    let mut truncated = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    truncated.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await.unwrap();
    let _silent = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), garbage.read(&mut buf)).await;

    // A client certificate: its CN is the principal (auditor may consume
    // payments.*, so it sees those topics and nothing else).
    let mut admin_tls = tls_client(&url, dir.path(), true).await.unwrap();
    let listed = admin_tls.list_topics(proto::ListTopicsRequest::default()).await.unwrap().into_inner();
    assert!(listed.topics.is_empty());
    let e = admin_tls.create_topic(topic_req("payments.eu")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("auditor"), "{}", e.message());

    // Without a client certificate the handshake is refused.
    let refused = match tls_client(&url, dir.path(), false).await {
        Err(_) => true,
        Ok(mut c) => c.list_topics(proto::ListTopicsRequest::default()).await.is_err(),
    };
    assert!(refused, "mTLS requires a client certificate");

    // The silent client times out of its handshake; others were served meanwhile.
    let mut again = tls_client(&url, dir.path(), true).await.unwrap();
    again.list_topics(proto::ListTopicsRequest::default()).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_the_next_call_and_a_bad_file_keeps_the_old_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let write = |payments_may_consume: bool, broken: bool| {
        let mut text = format!(
            "[security]\n[[security.users]]\nname = \"admin\"\ntoken_sha256 = \"{}\"\n[[security.users]]\nname = \"svc\"\ntoken_sha256 = \"{}\"\n[[security.acl]]\nprincipal = \"admin\"\noperations = [\"all\"]\ntopics = [\"*\"]\ngroups = [\"*\"]\n",
            token_sha256("admin-token"),
            token_sha256("svc-token")
        );
        if payments_may_consume {
            text.push_str(
                "[[security.acl]]\nprincipal = \"svc\"\noperations = [\"consume\"]\ntopics = [\"payments\"]\n",
            );
        }
        if broken {
            text.push_str("[[security.acl]]\nprincipal = \"svc\"\noperations = [\"fly\"]\ntopics = [\"x\"]\n");
        }
        std::fs::write(&path, text).unwrap();
    };
    write(false, false);
    let file = strata::config::ConfigFile::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut config = common::config(&dir.path().join("data"));
    file.apply(&mut config).unwrap();
    config.config_file = Some(path.clone());
    let server = strata::server::start(config).await.unwrap();
    let url = server.url();
    client(&url, Some("admin-token")).await.create_topic(topic_req("payments")).await.unwrap();
    let mut svc = client(&url, Some("svc-token")).await;
    let fetch = || proto::FetchRequest { topic: "payments".into(), ..Default::default() };
    assert_eq!(svc.fetch(fetch()).await.unwrap_err().code(), Code::PermissionDenied);
    // Granted in the file: applies without a restart (the file watch).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write(true, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while svc.fetch(fetch()).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the reload did not apply");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A file that does not compile is refused: the old rules stay.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write(false, true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    svc.fetch(fetch()).await.expect("the old rules stay");
    // An open subscription is checked again on a reload: revoked, it ends
    // with PERMISSION_DENIED.
    let request = proto::SubscribeRequest { topic_pattern: "payments".into(), ..Default::default() };
    let mut stream = svc.subscribe(request).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write(false, false);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the subscription ends after the reload");
    let status = ended.expect("with an error, not a clean end");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    server.shutdown().await.unwrap();
}

/// librdkafka over SASL PLAIN (username = user, password = token): the
/// grants of the gRPC tests hold for Kafka clients too, with Kafka's codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_authenticate_with_sasl_plain_and_get_kafkas_authorization_codes() {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;
    let dir = tempfile::tempdir().unwrap();
    let config = strata::config::BrokerConfig { security: Some(security()), ..common::config(dir.path()) };
    let server = strata::server::start(config).await.unwrap();
    let mut admin = client(&server.url(), Some("admin-token")).await;
    admin.create_topic(topic_req("payments.eu")).await.unwrap();
    admin.create_topic(topic_req("secret")).await.unwrap();
    let kafka = server.kafka_addr().unwrap().to_string();
    let producer = |user: &str, password: &str| -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanisms", "PLAIN")
            .set("sasl.username", user)
            .set("sasl.password", password)
            .set("message.timeout.ms", "5000")
            .create()
            .unwrap()
    };
    let send = |p: FutureProducer, topic: &'static str| async move {
        let record = FutureRecord::<(), _>::to(topic).payload("v").partition(0);
        p.send(record, Duration::from_secs(10)).await.map(|d| d.offset).map_err(|(e, _)| e)
    };
    let svc = producer("payments-svc", "payments-svc-token");
    assert_eq!(send(svc.clone(), "payments.eu").await.unwrap(), 0);
    match send(svc, "secret").await {
        Err(KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)) => {}
        other => panic!("produce to a topic not granted: {other:?}"),
    }
    match send(producer("payments-svc", "wrong"), "payments.eu").await {
        Err(e) => assert!(!matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::NoError)), "{e:?}"),
        Ok(o) => panic!("a wrong token produced at offset {o}"),
    }
    // Nothing but the granted record landed.
    let fetch = |topic: &str| proto::FetchRequest { topic: topic.into(), ..Default::default() };
    let eu = admin.fetch(fetch("payments.eu")).await.unwrap().into_inner();
    assert_eq!(eu.records.len(), 1);
    let secret = admin.fetch(fetch("secret")).await.unwrap().into_inner();
    assert!(secret.records.is_empty());
    server.shutdown().await.unwrap();
}

/// The Kafka listener over TLS with real clients: librdkafka with SASL_SSL
/// (and a client certificate, which the listener requires) is the SASL
/// user; kafka-python with SSL alone is its certificate's CN. Grants and
/// refusals as over gRPC, and only the granted records land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_clients_over_tls_authenticate_by_sasl_or_by_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let server = strata::server::start(tls_config(dir.path())).await.unwrap();
    let mut admin = tls_client_as(&server.url(), dir.path(), true, Some("admin-token")).await.unwrap();
    admin.create_topic(topic_req("payments.eu")).await.unwrap();
    admin.create_topic(topic_req("secret")).await.unwrap();
    let kafka = server.kafka_addr().unwrap().to_string();
    common::python::run_kafka_script("tls", &kafka, &[dir.path().to_str().unwrap()], "TLS OK").await;
    let fetch = |topic: &str| proto::FetchRequest { topic: topic.into(), ..Default::default() };
    let eu = admin.fetch(fetch("payments.eu")).await.unwrap().into_inner();
    assert_eq!(eu.records.len(), 10);
    let secret = admin.fetch(fetch("secret")).await.unwrap().into_inner();
    assert!(secret.records.is_empty());
    let group = admin.describe_group(proto::DescribeGroupRequest { group: "audit".into() }).await.unwrap().into_inner();
    assert_eq!(group.partitions.iter().map(|p| p.committed_offset.unwrap_or(0)).sum::<u64>(), 10, "{group:?}");
    server.shutdown().await.unwrap();
}

/// max_connections_per_ip: connections past it are closed at once and
/// counted as refused; once one closes, a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_are_refused_and_counted() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = strata::config::BrokerConfig { max_connections_per_ip: 2, ..common::config(dir.path()) };
    let server = strata::server::start(config).await.unwrap();
    let kafka = server.kafka_addr().unwrap();
    let first = tokio::net::TcpStream::connect(kafka).await.unwrap();
    let _second = tokio::net::TcpStream::connect(kafka).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tokio::net::TcpStream::connect(kafka).await.unwrap();
    let mut buf = [0u8; 8];
    let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the third connection is closed: {closed:?}");
    let metrics = server.broker().metrics_text();
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("strata_connections_refused_total{listener=\"kafka\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(refused >= 1.0, "{metrics}");
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fourth = tokio::net::TcpStream::connect(kafka).await.unwrap();
    let open = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf)).await;
    assert!(open.is_err(), "a slot came free, so the fourth stays open: {open:?}");
    server.shutdown().await.unwrap();
}
