//! Webhooks: subscriptions to events, delivered by HTTP POST to a URL the
//! Standard Webhooks way (<https://www.standardwebhooks.com>): signed, retried
//! with backoff, in position order, at least once.
//!
//! Pure rules only: what a subscription is, how a delivery is signed and
//! written, when a failed one is tried again, and which addresses a delivery
//! may never reach.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::events::{Event, EventType};

/// One subscription: where to POST which events, and how far it got.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// `wh_` and 24 hex digits.
    pub id: String,
    pub url: String,
    /// The event types delivered; never empty.
    pub types: Vec<EventType>,
    pub description: Option<String>,
    pub status: Status,
    /// Why the subscription was disabled, while it is.
    pub disabled_reason: Option<String>,
    /// The position of the last event delivered (or skipped, being of
    /// another type): the next delivery is of the first event after it.
    pub cursor: u64,
    /// The event being delivered, while an attempt at it failed.
    pub retrying: Option<Retrying>,
    /// Counts the changes of status an admin made (patch, replay): a
    /// delivery under way when one is made does not write over it.
    pub revision: u64,
    pub created_at: DateTime<Utc>,
    /// Signs every delivery; shown to the admin once, at creation.
    pub secret: SigningSecret,
}

/// Whether a subscription is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Deliveries are made.
    Active,
    /// An admin paused it: events wait, nothing is lost.
    Paused,
    /// Its receiver kept failing past the last retry; events wait until it
    /// is re-enabled (`PATCH` with `active`, or a replay).
    Disabled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Active, Self::Paused, Self::Disabled]
            .into_iter()
            .find(|status| status.as_str() == name)
    }
}

/// An event whose delivery failed and will be tried again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retrying {
    pub position: u64,
    /// Attempts made so far (at least 1).
    pub attempts: u32,
    pub next_try_at: DateTime<Utc>,
}

/// The secret a subscription's deliveries are signed with: `whsec_` and the
/// base64 of 32 random bytes. Never printed (`Debug` hides it).
#[derive(Clone)]
pub struct SigningSecret(SecretString);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(whsec_****)")
    }
}

/// What a signing secret must look like.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a signing secret is `whsec_` and the base64 of 24 to 64 bytes")]
pub struct InvalidSecret;

impl SigningSecret {
    const PREFIX: &'static str = "whsec_";

    /// A secret of these random bytes.
    pub fn from_random(bytes: [u8; 32]) -> Self {
        Self(format!("{}{}", Self::PREFIX, STANDARD.encode(bytes)).into())
    }

    /// A secret as stored (`whsec_…`).
    pub fn parse(text: &str) -> Result<Self, InvalidSecret> {
        let secret = Self(text.to_owned().into());
        match secret.key() {
            Ok(key) if (24..=64).contains(&key.len()) => Ok(secret),
            _ => Err(InvalidSecret),
        }
    }

    /// The text shown to the admin and stored: `whsec_…`.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The HMAC key: the bytes after `whsec_`.
    fn key(&self) -> Result<Vec<u8>, InvalidSecret> {
        let encoded = self
            .0
            .expose_secret()
            .strip_prefix(Self::PREFIX)
            .ok_or(InvalidSecret)?;
        STANDARD.decode(encoded).map_err(|_| InvalidSecret)
    }

    /// `webhook-signature` of a delivery: `v1,` and the base64 of
    /// HMAC-SHA256 over `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // A stored secret was parsed (or generated), so its key decodes.
        let key = self.key().unwrap_or_default();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The largest body a delivery may have. Every event's data is a few
/// identifiers of at most 100 characters and numbers, so a body stays far
/// below it; one that does not is a bug, and is not sent.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// The body of a delivery: `{"type", "timestamp", "position", "data"}` as
/// the Standard Webhooks specification shapes it, `timestamp` being when the
/// event happened (RFC 3339).
pub fn payload(event: &Event) -> Vec<u8> {
    // `what` serializes as `{"type", "data"}` (domain::events), as in the feed.
    let mut body = serde_json::to_value(&event.what).unwrap_or_default();
    body["timestamp"] = event
        .occurred_at
        .to_rfc3339_opts(SecondsFormat::Millis, true)
        .into();
    body["position"] = event.position.into();
    serde_json::to_vec(&body).unwrap_or_default()
}

/// When failed deliveries are tried again: after the n-th failed attempt,
/// the n-th delay (give or take a fifth, so that subscriptions that failed
/// together do not retry together). Past the last delay the subscription is
/// disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl Default for RetrySchedule {
    /// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts over about
    /// 28 hours, as Standard Webhooks suggests.
    fn default() -> Self {
        Self(
            [5, 300, 1800, 7200, 18_000, 36_000, 36_000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        )
    }
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Self {
        Self(delays)
    }

    /// How many attempts an event gets in all.
    pub fn attempts(&self) -> u32 {
        u32::try_from(self.0.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// The wait after the `failed`-th failed attempt (1 for the first), or
    /// none when that was the last. `random` (any value) picks the jitter.
    pub fn after_failure(&self, failed: u32, random: u64) -> Option<Duration> {
        let delay = *self.0.get(usize::try_from(failed.checked_sub(1)?).ok()?)?;
        // From 80 % to 120 % of the delay.
        let spread = delay.as_millis() as u64 * 2 / 5;
        let offset = random.checked_rem(spread + 1).unwrap_or(0);
        Some(delay.mul_f64(0.8) + Duration::from_millis(offset))
    }
}

/// Why a webhook URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("url is not an absolute http(s) URL: {0}")]
    Malformed(String),
    #[error("url must use https")]
    NotHttps,
    #[error("url must not hold a user name or password")]
    Credentials,
    #[error("url is longer than {max} characters", max = Target::MAX_LENGTH)]
    TooLong,
    #[error(
        "url points to a loopback, private, link-local or otherwise internal address ({0}); \
         webhooks are delivered to public addresses only"
    )]
    Refused(String),
    #[error("url's host {0} does not resolve")]
    Unresolved(String),
}

/// The rules a webhook URL meets.
#[derive(Clone, Copy, Debug)]
pub struct TargetPolicy {
    /// Allow loopback, private and other internal addresses (tests, local setups).
    pub allow_private: bool,
    /// Refuse `http://`.
    pub require_https: bool,
}

/// A parsed webhook URL.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: url::Url,
}

/// Where a URL's host points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// An address written in the URL.
    Address(IpAddr),
    /// A name, to be resolved.
    Name(String),
}

impl Target {
    pub const MAX_LENGTH: usize = 2048;

    /// Checks what the URL says by itself: an absolute http(s) URL without
    /// credentials, https when required, and no refused address written in
    /// it. A name is checked once resolved ([`TargetPolicy::check_addresses`]).
    pub fn parse(text: &str, policy: TargetPolicy) -> Result<Self, TargetError> {
        if text.len() > Self::MAX_LENGTH {
            return Err(TargetError::TooLong);
        }
        let url = url::Url::parse(text).map_err(|e| TargetError::Malformed(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if !policy.require_https => {}
            "http" => return Err(TargetError::NotHttps),
            other => return Err(TargetError::Malformed(format!("scheme {other}"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(TargetError::Credentials);
        }
        let target = Self { url };
        match target.host()? {
            Host::Address(address) => policy.check_addresses(&[address])?,
            Host::Name(name) if !policy.allow_private && is_local_name(&name) => {
                return Err(TargetError::Refused(name));
            }
            Host::Name(_) => {}
        }
        Ok(target)
    }

    pub fn host(&self) -> Result<Host, TargetError> {
        match self.url.host() {
            Some(url::Host::Ipv4(address)) => Ok(Host::Address(IpAddr::V4(address))),
            Some(url::Host::Ipv6(address)) => Ok(Host::Address(IpAddr::V6(address))),
            Some(url::Host::Domain(name)) => Ok(Host::Name(name.to_owned())),
            None => Err(TargetError::Malformed("no host".to_owned())),
        }
    }

    /// The port a delivery connects to.
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(443)
    }
}

/// Names that mean this machine whatever DNS says.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

impl TargetPolicy {
    /// Refuses a host whose addresses include a refused one (unless private
    /// targets are allowed), or that has none.
    pub fn check_addresses(&self, addresses: &[IpAddr]) -> Result<(), TargetError> {
        if addresses.is_empty() {
            return Err(TargetError::Unresolved(String::new()));
        }
        if self.allow_private {
            return Ok(());
        }
        match addresses.iter().find(|address| is_refused(**address)) {
            Some(refused) => Err(TargetError::Refused(refused.to_string())),
            None => Ok(()),
        }
    }
}

/// Whether a delivery may never connect to `address`: loopback, private,
/// link-local, unspecified, multicast, broadcast, shared (CGNAT), unique
/// local, IPv4-mapped or -embedding IPv6, documentation, benchmarking and
/// reserved ranges. What is left is the public internet.
pub fn is_refused(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_unspecified()
        || address.is_multicast()
        || address.is_broadcast()
        || address.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

fn is_refused_v6(address: Ipv6Addr) -> bool {
    let segments = address.segments();
    address.is_loopback()
        || address.is_unspecified()
        || address.is_multicast()
        || (segments[0] & 0xfe00) == 0xfc00 // unique local
        || (segments[0] & 0xffc0) == 0xfe80 // link-local
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || address.to_ipv4_mapped().is_some() // ::ffff:a.b.c.d
        || segments[..6] == [0; 6] // IPv4-compatible ::a.b.c.d
        || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // NAT64
        || segments[0] == 0x2002 // 6to4
        || (segments[0] == 0x2001 && segments[1] == 0) // Teredo
        || (segments[0] == 0x2001 && segments[1] == 0xdb8) // documentation
        || segments[0] == 0x100 && segments[1..4] == [0; 3] // discard-only
}

/// A subscription id: `wh_` and 24 hex digits.
pub fn is_subscription_id(text: &str) -> bool {
    text.strip_prefix("wh_")
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::Happened;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The specification's published vector (and its reference libraries' tests).
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_secret_is_whsec_and_base64_and_never_printed() {
        let secret = SigningSecret::from_random([7; 32]);
        assert!(secret.expose().starts_with("whsec_"));
        assert_eq!(secret.key().unwrap(), [7; 32]);
        assert!(SigningSecret::parse(secret.expose()).is_ok());
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
        for bad in ["", "whsec_", "whsec_!!", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
            assert!(SigningSecret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retries_back_off_with_jitter_then_stop() {
        let schedule = RetrySchedule::default();
        assert_eq!(schedule.attempts(), 8);
        for random in [0, 1, 12345, u64::MAX] {
            let first = schedule.after_failure(1, random).unwrap();
            assert!(first >= Duration::from_secs(4) && first <= Duration::from_secs(6));
            let last = schedule.after_failure(7, random).unwrap();
            assert!(last >= Duration::from_secs(28_800) && last <= Duration::from_secs(43_200));
        }
        assert_ne!(
            schedule.after_failure(2, 1),
            schedule.after_failure(2, 99_999)
        );
        assert_eq!(schedule.after_failure(8, 0), None);
        assert_eq!(schedule.after_failure(0, 0), None);
        let total: Duration = (1..8).filter_map(|n| schedule.after_failure(n, 0)).sum();
        assert!(total > Duration::from_secs(20 * 3600), "{total:?}");
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_not() {
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::a00:1",
            "ff02::1",
        ] {
            assert!(is_refused(refused.parse().unwrap()), "{refused}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1111"] {
            assert!(!is_refused(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn urls_are_checked_for_scheme_credentials_and_internal_hosts() {
        let strict = TargetPolicy {
            allow_private: false,
            require_https: true,
        };
        let open = TargetPolicy {
            allow_private: true,
            require_https: false,
        };
        assert!(Target::parse("https://hooks.example.com/allot", strict).is_ok());
        for (url, error) in [
            ("http://hooks.example.com/", TargetError::NotHttps),
            ("https://u:p@hooks.example.com/", TargetError::Credentials),
            (
                "https://127.0.0.1/",
                TargetError::Refused("127.0.0.1".into()),
            ),
            ("https://[::1]:8443/", TargetError::Refused("::1".into())),
            (
                "https://localhost/",
                TargetError::Refused("localhost".into()),
            ),
            // Written in other notations, still loopback.
            (
                "https://2130706433/",
                TargetError::Refused("127.0.0.1".into()),
            ),
            ("https://0x7f.1/", TargetError::Refused("127.0.0.1".into())),
        ] {
            assert_eq!(Target::parse(url, strict).unwrap_err(), error, "{url}");
        }
        assert!(matches!(
            Target::parse("ftp://example.com/", strict),
            Err(TargetError::Malformed(_))
        ));
        assert!(matches!(
            Target::parse("/relative", strict),
            Err(TargetError::Malformed(_))
        ));
        assert!(Target::parse("http://127.0.0.1:9000/hook", open).is_ok());
        assert_eq!(
            Target::parse("https://example.com/", open).unwrap().port(),
            443
        );
        let public: IpAddr = "8.8.8.8".parse().unwrap();
        let private: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(strict.check_addresses(&[public]).is_ok());
        assert!(strict.check_addresses(&[public, private]).is_err());
        assert!(strict.check_addresses(&[]).is_err());
        assert!(open.check_addresses(&[private]).is_ok());
    }

    #[test]
    fn a_payload_has_type_timestamp_position_and_data() {
        let event = Event {
            position: 7,
            id: "evt_1".to_owned(),
            occurred_at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
                .unwrap()
                .with_timezone(&Utc),
            what: Happened::LineMoved {
                orderid: "o".repeat(100),
                sku: "s".repeat(100),
                qty: 1_000_000_000,
                from: "f".repeat(100),
                to: "t".repeat(100),
            },
        };
        let body = payload(&event);
        assert!(body.len() < MAX_PAYLOAD_BYTES);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "line.moved");
        assert_eq!(json["timestamp"], "2026-01-02T03:04:05.678Z");
        assert_eq!(json["position"], 7);
        assert_eq!(json["data"]["to"], "t".repeat(100));
    }

    #[test]
    fn subscription_ids_are_wh_and_24_hex_digits() {
        assert!(is_subscription_id("wh_0123456789abcdef01234567"));
        assert!(!is_subscription_id("wh_0123"));
        assert!(!is_subscription_id("0123456789abcdef01234567"));
    }
}
