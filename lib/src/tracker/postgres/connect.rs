//! Connections to PostgreSQL that give up: every phase of reaching a server is
//! bounded, and a host that does not answer is passed over for the next one.
//!
//! tokio-postgres tries the hosts of a URL in order, but its `connect_timeout`
//! bounds only the TCP connect: a frozen primary (a hung disk, a process stopped
//! with SIGSTOP) still accepts the connection in its kernel and then never answers
//! the start-up message, so the attempt hung on the first host until the pool's
//! wait ran out, and the second host, promoted meanwhile, was never tried. Here each
//! host gets a single-host configuration of its own and its whole handshake (TCP,
//! start-up, authentication, the `target_session_attrs` check) runs under one
//! deadline, libpq's meaning of `connect_timeout`; the next connection starts from
//! the host that answered last, so that after a failover new connections do not
//! wait on the old primary first.
//!
//! What runs on a connection is bounded by the engine (`Pg::session`): a call that
//! outlives its deadline takes its connection out of the pool, since a request still
//! in flight on it would hold up whoever used it next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool::managed::{Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use tokio_postgres::config::Host;
use tokio_postgres::{Config, NoTls};

use super::schema::LOCK_TIMEOUT;
use crate::error::Error;

/// The handshake deadline per host when the URL gives no `connect_timeout`.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Keepalive settings used where the URL gives none: an idle pooled connection to
/// a host that vanished (a partition that drops packets) is found dead within about
/// 11 s instead of tokio-postgres's default of 2 hours of idleness, and one with
/// data unacknowledged for 10 s is closed by the kernel (`tcp_user_timeout`). A
/// frozen host's kernel still acknowledges both: only the engine's deadlines catch
/// that.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(5);
const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVES_RETRIES: u32 = 3;
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);
/// tokio-postgres's default `keepalives_idle`, which means "not set in the URL".
const TOKIO_POSTGRES_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);

/// The pool's manager: one configuration per host, tried in turn.
pub(crate) struct Manager {
    hosts: Vec<(String, Config)>,
    handshake: Duration,
    /// The host that answered last: where the next connection starts.
    preferred: AtomicUsize,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field(
                "hosts",
                &self
                    .hosts
                    .iter()
                    .map(|(label, _)| label)
                    .collect::<Vec<_>>(),
            )
            .field("handshake", &self.handshake)
            .finish_non_exhaustive()
    }
}

/// Why no connection could be had: every host's reason.
#[derive(Debug)]
pub(crate) struct ConnectError(pub(crate) String);

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectError {}

impl Manager {
    /// A manager for the URL's configuration, with the session settings every
    /// pooled connection carries.
    /// `connect_timeout` is the pool's whole wait for a connection: no host's
    /// handshake may take longer.
    pub(crate) fn new(
        config: &Config,
        statement_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, Error> {
        let handshake = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT)
            .min(connect_timeout);
        let hosts = split_hosts(config)?
            .into_iter()
            .map(|(label, mut one)| {
                session_settings(&mut one, statement_timeout);
                // The deadline here covers the whole handshake; tokio-postgres's
                // own covers the TCP connect, within it.
                one.connect_timeout(handshake);
                (label, one)
            })
            .collect();
        Ok(Self {
            hosts,
            handshake,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The host new connections start from, as `host:port`.
    pub(crate) fn preferred_host(&self) -> &str {
        &self.hosts[self.preferred.load(Ordering::Relaxed) % self.hosts.len()].0
    }
}

impl deadpool::managed::Manager for Manager {
    type Type = ClientWrapper;
    type Error = ConnectError;

    async fn create(&self) -> Result<ClientWrapper, ConnectError> {
        let n = self.hosts.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::with_capacity(n);
        for k in 0..n {
            let i = (first + k) % n;
            let (label, config) = &self.hosts[i];
            // Pessimistic: should this attempt be cut short from outside (the
            // pool's own wait for a connection ran out first), the next starts from
            // the next host rather than wait on this one again.
            self.preferred.store((i + 1) % n, Ordering::Relaxed);
            match tokio::time::timeout(self.handshake, config.connect(NoTls)).await {
                Ok(Ok((client, connection))) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    let task = tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "a PostgreSQL connection ended");
                        }
                    });
                    return Ok(ClientWrapper::new(client, task));
                }
                Ok(Err(e)) => failures.push(format!("{label}: {}", super::with_causes(&e))),
                Err(_) => failures.push(format!(
                    "{label}: no answer to the start-up handshake within {} ms",
                    self.handshake.as_millis()
                )),
            }
        }
        Err(ConnectError(failures.join("; ")))
    }

    async fn recycle(
        &self,
        client: &mut ClientWrapper,
        _: &Metrics,
    ) -> RecycleResult<ConnectError> {
        if client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        Ok(())
    }
}

/// The URL's configuration, one copy per host (with its port and `hostaddr`), in
/// the URL's order.
fn split_hosts(config: &Config) -> Result<Vec<(String, Config)>, Error> {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let n = hosts.len().max(addrs.len());
    let bad = |reason: String| Error::InvalidConfig {
        field: "store",
        reason,
    };
    if n == 0 {
        return Err(bad("the PostgreSQL URL names no host".into()));
    }
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(bad(format!(
            "the PostgreSQL URL names {} hosts and {} hostaddrs",
            hosts.len(),
            addrs.len()
        )));
    }
    if ports.len() > 1 && ports.len() != n {
        return Err(bad(format!(
            "the PostgreSQL URL names {n} hosts and {} ports",
            ports.len()
        )));
    }
    Ok((0..n)
        .map(|i| {
            let port = ports
                .get(i)
                .or_else(|| ports.first())
                .copied()
                .unwrap_or(5432);
            let mut one = base(config);
            let mut label = String::new();
            match hosts.get(i) {
                Some(Host::Tcp(h)) => {
                    one.host(h);
                    label.push_str(h);
                }
                Some(Host::Unix(path)) => {
                    one.host_path(path);
                    label.push_str(&path.display().to_string());
                }
                None => {}
            }
            if let Some(addr) = addrs.get(i) {
                one.hostaddr(*addr);
                if label.is_empty() {
                    label = addr.to_string();
                }
            }
            one.port(port);
            (format!("{label}:{port}"), one)
        })
        .collect())
}

/// Everything of `config` but its hosts, ports and addresses.
fn base(config: &Config) -> Config {
    let mut one = Config::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    one.application_name(config.get_application_name().unwrap_or("oncely"));
    one.ssl_mode(config.get_ssl_mode());
    one.ssl_negotiation(config.get_ssl_negotiation());
    one.channel_binding(config.get_channel_binding());
    one.target_session_attrs(config.get_target_session_attrs());
    one.keepalives(config.get_keepalives());
    let idle = config.get_keepalives_idle();
    one.keepalives_idle(if idle == TOKIO_POSTGRES_KEEPALIVES_IDLE {
        KEEPALIVES_IDLE
    } else {
        idle
    });
    one.keepalives_interval(
        config
            .get_keepalives_interval()
            .unwrap_or(KEEPALIVES_INTERVAL),
    );
    one.keepalives_retries(
        config
            .get_keepalives_retries()
            .unwrap_or(KEEPALIVES_RETRIES),
    );
    one.tcp_user_timeout(
        config
            .get_tcp_user_timeout()
            .copied()
            .unwrap_or(TCP_USER_TIMEOUT),
    );
    one
}

/// The session settings of every pooled connection, after the URL's own `options`
/// (later settings win, so these hold):
///
/// * `lock_timeout`: no statement waits on a lock for longer (see [`LOCK_TIMEOUT`]);
/// * `statement_timeout`: the server gives up on a statement when the engine's
///   deadline does (which also bounds a server that cannot answer at all);
/// * `default_transaction_isolation = read committed`: a mark's snapshot is then
///   taken after its namespace lock, whatever the database's default.
fn session_settings(config: &mut Config, statement_timeout: Duration) {
    let ours = format!(
        "-c lock_timeout={} -c statement_timeout={} -c default_transaction_isolation=read\\ committed",
        LOCK_TIMEOUT.as_millis(),
        statement_timeout.as_millis()
    );
    let options = match config.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    config.options(options);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_gets_a_configuration_of_its_own() {
        let config: Config =
            "postgres://u:pw@db1:5433,db2/app?target_session_attrs=read-write&connect_timeout=3"
                .parse()
                .unwrap();
        let manager =
            Manager::new(&config, Duration::from_secs(4), Duration::from_secs(4)).unwrap();
        let labels: Vec<&str> = manager.hosts.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            ["db1:5433", "db2:5432"],
            "a host without a port gets 5432"
        );
        assert_eq!(manager.handshake, Duration::from_secs(3));
        for ((_, one), port) in manager.hosts.iter().zip([5433, 5432]) {
            assert_eq!(one.get_hosts().len(), 1);
            assert_eq!(one.get_ports(), [port]);
            assert_eq!(one.get_user(), Some("u"));
            assert_eq!(one.get_password(), Some(&b"pw"[..]));
            assert_eq!(one.get_dbname(), Some("app"));
            assert_eq!(
                one.get_target_session_attrs(),
                tokio_postgres::config::TargetSessionAttrs::ReadWrite
            );
            assert_eq!(one.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
            assert_eq!(one.get_keepalives_idle(), KEEPALIVES_IDLE);
            let options = one.get_options().unwrap();
            assert!(options.contains("lock_timeout=2000"), "{options}");
            assert!(options.contains("statement_timeout=4000"), "{options}");
        }
    }

    #[test]
    fn the_urls_own_settings_are_kept() {
        let config: Config =
            "postgres://db1:1,db2:2/app?keepalives_idle=30&tcp_user_timeout=1&options=-c%20work_mem%3D8MB"
                .parse()
                .unwrap();
        let manager =
            Manager::new(&config, Duration::from_secs(4), Duration::from_secs(4)).unwrap();
        let (_, one) = &manager.hosts[1];
        assert_eq!(one.get_ports(), [2]);
        assert_eq!(one.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(one.get_tcp_user_timeout(), Some(&Duration::from_secs(1)));
        let options = one.get_options().unwrap();
        assert!(
            options.starts_with("-c work_mem=8MB -c lock_timeout="),
            "{options}"
        );
        assert_eq!(manager.handshake, DEFAULT_HANDSHAKE_TIMEOUT);
    }

    #[test]
    fn host_and_port_counts_must_agree() {
        let config: Config = "host=a,b,c port=1,2".parse().unwrap();
        assert!(Manager::new(&config, Duration::from_secs(1), Duration::from_secs(1)).is_err());
    }
}
