//! Webhook deliveries over HTTP/1.1 (reqwest, rustls with the ring provider
//! and the webpki roots).
//!
//! Server-side request forgery is closed where the connection is made: the
//! client resolves every host name through [`CheckedResolver`], which hands
//! it only addresses the address rule allows, so the address connected to is
//! the one checked (a name that resolved to a public address at creation and
//! to an internal one now is refused now). An address written in the URL is
//! checked before sending. Redirects are not followed (a 3xx is a failure),
//! no proxy is used, and the receiver's body is never read.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::domain::webhooks::{Target, TargetError, TargetPolicy};
use crate::services::ports::webhooks::{AttemptOutcome, Outgoing, ResolveError, WebhookSender};

/// Longest wait for a host name's addresses.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct HttpSender {
    client: reqwest::Client,
    policy: TargetPolicy,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("cannot set up TLS for webhook deliveries: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Makes ring rustls's process-wide provider, if none is yet. reqwest is
/// built without a provider of its own (its default would build aws-lc), so
/// every reqwest client of the process (the tests' too, which share the
/// crate's features) needs one installed before it is built.
pub fn install_crypto_provider() {
    let _already = rustls::crypto::ring::default_provider().install_default();
}

impl HttpSender {
    /// A sender whose every delivery ends within `timeout` (connecting included).
    pub fn new(policy: TargetPolicy, timeout: Duration) -> Result<Self, SenderError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .dns_resolver(CheckedResolver { policy })
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .user_agent(concat!("allot-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            policy,
            timeout,
        })
    }

    fn describe(&self, error: &reqwest::Error) -> String {
        if error.is_timeout() {
            return format!("no answer within {} ms", self.timeout.as_millis());
        }
        // The URL may hold a token of the receiver's: not repeated.
        let mut text = String::new();
        let mut cause: Option<&dyn std::error::Error> = Some(error);
        while let Some(error) = cause {
            let part = error.to_string();
            if !text.contains(&part) {
                if !text.is_empty() {
                    text.push_str(": ");
                }
                text.push_str(&part);
            }
            cause = error.source();
        }
        text.replace(error.url().map(|url| url.as_str()).unwrap_or("\0"), "")
    }
}

impl WebhookSender for HttpSender {
    async fn send(&self, delivery: Outgoing) -> AttemptOutcome {
        // An address written in the URL is not resolved: check it here.
        if let Err(error) = Target::parse(&delivery.url, self.policy) {
            return AttemptOutcome::Error(error.to_string());
        }
        let sent = self
            .client
            .post(&delivery.url)
            .header("content-type", "application/json")
            .header("webhook-id", &delivery.id)
            .header("webhook-timestamp", delivery.timestamp.to_string())
            .header("webhook-signature", &delivery.signature)
            .body(delivery.body)
            .send()
            .await;
        match sent {
            Ok(response) => AttemptOutcome::Status(response.status().as_u16()),
            Err(error) => AttemptOutcome::Error(self.describe(&error.without_url())),
        }
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, ResolveError> {
        lookup(host, port).await.map_err(|reason| ResolveError {
            host: host.to_owned(),
            reason,
        })
    }
}

async fn lookup(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addresses)) => Ok(addresses.map(|address| address.ip()).collect()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_elapsed) => Err(format!("no answer within {} s", RESOLVE_TIMEOUT.as_secs())),
    }
}

/// Resolves names for the client, refusing a name with any refused address.
struct CheckedResolver {
    policy: TargetPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addresses = lookup(&host, 0).await?;
            policy
                .check_addresses(&addresses)
                .map_err(|error| match error {
                    TargetError::Unresolved(_) => TargetError::Unresolved(host.clone()),
                    other => other,
                })?;
            let addresses: Addrs = Box::new(
                addresses
                    .into_iter()
                    .map(|address| SocketAddr::new(address, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addresses)
        })
    }
}
