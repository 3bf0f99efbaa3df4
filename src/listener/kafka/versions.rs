//! The Kafka APIs strata serves and at which versions: what ApiVersions
//! tells clients. The ranges start where current clients start (librdkafka
//! 2.x, the Java client 3.x/4.x, kafka-python 2.x, KafkaJS, franz-go) and
//! end where this listener's handling ends; e.g. Fetch stops at v12
//! because v13 names topics by id.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use super::errors::code;

/// (API, min version, max version) served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::SaslAuthenticate, 0, 2),
];

pub fn serves(key: ApiKey, version: i16) -> bool {
    SERVED.iter().any(|&(k, min, max)| k == key && (min..=max).contains(&version))
}

/// "versions 3..=9", or "not served".
pub fn range_text(key: ApiKey) -> String {
    match SERVED.iter().find(|(k, _, _)| *k == key) {
        Some((_, min, max)) => format!("versions {min}..={max} are served"),
        None => "this API is not served".to_string(),
    }
}

fn api_keys() -> Vec<ApiVersion> {
    SERVED
        .iter()
        .map(|&(k, min, max)| ApiVersion::default().with_api_key(k as i16).with_min_version(min).with_max_version(max))
        .collect()
}

pub fn response(_version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(code::NONE).with_api_keys(api_keys())
}

/// The answer to an ApiVersions of a version not served (encoded as v0).
pub fn unsupported_response() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(code::UNSUPPORTED_VERSION).with_api_keys(api_keys())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_one_the_codec_can_encode_and_decode() {
        for &(key, min, max) in SERVED {
            let valid = key.valid_versions();
            assert!(min >= valid.min && max <= valid.max, "{key:?} {min}..={max} outside {valid:?}");
        }
    }
}
