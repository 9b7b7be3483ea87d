//! Starting roles: bind every listener first (so a port clash is reported before anything runs),
//! then serve until the shutdown token is cancelled. A role with a certificate reloads it on SIGHUP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::admin;
use crate::config::{AdminTls, DeliveryTls, Site};
use crate::hub::{inbound::HubInbound, Hub, HubError};
use crate::node::{inbound::NodeInbound, MailboxNode, NodeError};
use crate::smtp::{self, DeliveryAuth, DeliverySecret, ServerTls, SmtpConfig, TlsError, TlsFiles};

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No such hub or node in the config.
    #[error("{file}: there is no {kind} named `{name}` (known: {known})")]
    UnknownRole {
        /// The config file.
        file: String,
        /// "hub" or "node".
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The names the config has.
        known: String,
    },
    /// A listener could not be bound.
    #[error("{role}: cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The role.
        role: String,
        /// "smtp" or "admin".
        what: &'static str,
        /// The address from the config.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The hub's store could not be opened.
    #[error("{role}: {source}")]
    Hub {
        /// The role.
        role: String,
        /// The cause.
        source: HubError,
    },
    /// The node's store or logs could not be opened.
    #[error("{role}: {source}")]
    Node {
        /// The role.
        role: String,
        /// The cause.
        source: NodeError,
    },
    /// The role's certificate or key could not be loaded.
    #[error("{role}: {source}")]
    Tls {
        /// The role.
        role: String,
        /// The cause, naming the key and the file (boxed: rustls errors are large).
        source: Box<TlsError>,
    },
    /// SIGHUP (certificate reload) could not be set up.
    #[error("{role}: cannot handle SIGHUP for certificate reloads: {source}")]
    Signal {
        /// The role.
        role: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A listener a role is serving on, for the start-up banner.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The role's name.
    pub role: String,
    /// "smtp" or "admin".
    pub what: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
}

async fn bind(
    role: &str,
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, Endpoint), StartError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            role: role.to_string(),
            what,
            addr,
            source,
        })?;
    let addr = l.local_addr().unwrap_or(addr);
    Ok((
        l,
        Endpoint {
            role: role.to_string(),
            what,
            addr,
        },
    ))
}

/// Which role a listener serves: a node's clients are the site's own hubs, each of which
/// opens up to one connection per delivery in flight, so the per-client cap is for hubs only.
#[derive(Clone, Copy)]
enum Listener {
    Hub,
    Node,
}

fn smtp_config(
    site: &Site,
    hostname: &str,
    role: Listener,
    tls: Option<Arc<ServerTls>>,
    require_tls: bool,
) -> SmtpConfig {
    let mut c = SmtpConfig::new(hostname, site.max_message_size);
    c.max_recipients = site.max_recipients;
    c.max_connections = site.max_connections;
    c.max_connections_per_client = match role {
        Listener::Hub => site.max_connections_per_client,
        Listener::Node => site.max_connections,
    };
    c.connection_limit_exceptions = site.connection_limit_exceptions.clone();
    c.idle_timeout = site.idle_timeout;
    c.data_timeout = site.data_timeout;
    c.bare_newline = site.bare_newline;
    c.tls = tls;
    c.require_tls = require_tls;
    c
}

/// Runs `reload` on every SIGHUP until shutdown. The signal is registered here, before the role
/// reports ready, so a SIGHUP right after start-up is not fatal.
fn on_sighup(
    role: &str,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
    mut reload: impl FnMut() + Send + 'static,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).map_err(|source| StartError::Signal {
        role: role.to_string(),
        source,
    })?;
    let stop = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                got = hangup.recv() => match got {
                    Some(()) => reload(),
                    None => break,
                },
            }
        }
    });
    Ok(())
}

/// Loads a role's certificate and reloads it on every SIGHUP until shutdown; a failed reload
/// keeps the certificate in use.
///
/// With `clients` (the site's CA), the listener completes a handshake only with a client that
/// presents a certificate that CA signed.
fn start_tls(
    role: &str,
    files: Option<&TlsFiles>,
    clients: Option<&PathBuf>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Option<Arc<ServerTls>>, StartError> {
    let Some(files) = files else {
        return Ok(None);
    };
    let tls = ServerTls::load_verifying(files.clone(), clients.cloned()).map_err(|source| {
        StartError::Tls {
            role: role.to_string(),
            source: Box::new(source),
        }
    })?;
    let (reloaded, name) = (tls.clone(), role.to_string());
    on_sighup(role, shutdown, tasks, move || match reloaded.reload() {
        Ok(()) => info!(
            role = %name,
            certificate = %reloaded.files().certificate.display(),
            "TLS certificate reloaded"
        ),
        Err(e) => error!(
            role = %name,
            error = %e,
            "TLS certificate reload failed; keeping the certificate in use"
        ),
    })?;
    Ok(Some(tls))
}

/// Reads `delivery_secret_file` again on every SIGHUP until shutdown and puts it in force, so a
/// hub with a wrong secret delivers once the file is fixed, without a restart. A site without the
/// file (the secret derived from `admin_token`) has nothing to reload.
fn reload_secret_on_sighup(
    role: &str,
    site: &Arc<Site>,
    secret: DeliverySecret,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), StartError> {
    let Some(file) = site.delivery_secret_file.clone() else {
        return Ok(());
    };
    let (site, name) = (site.clone(), role.to_string());
    on_sighup(role, shutdown, tasks, move || {
        match site.reread_delivery_secret() {
            Some(Ok(bytes)) => {
                secret.replace(bytes);
                info!(role = %name, file = %file.display(), "delivery secret reloaded");
            }
            Some(Err(e)) => error!(
                role = %name, error = %e,
                "delivery_secret_file reload failed; keeping the secret in use"
            ),
            None => {}
        }
    })
}

/// Opens hub `name` under `data/<name>` and starts its SMTP and admin listeners in `tasks`.
pub async fn start_hub(
    site: &Arc<Site>,
    name: &str,
    data: &Path,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Vec<Endpoint>, StartError> {
    let cfg = site
        .hub(name)
        .ok_or_else(|| unknown(site, "hub", name))?
        .clone();
    let (smtp_l, smtp_e) = bind(name, "smtp", cfg.smtp).await?;
    let (admin_l, admin_e) = bind(name, "admin", cfg.admin).await?;
    let tls = start_tls(name, cfg.tls.as_ref(), None, shutdown, tasks)?;
    let admin_tls = start_admin_tls(site, name, cfg.tls.as_ref(), shutdown, tasks)?;
    let hub =
        Hub::open(site.clone(), name, &data.join(name)).map_err(|source| StartError::Hub {
            role: name.to_string(),
            source,
        })?;
    let smtp = (
        smtp_l,
        Arc::new(HubInbound(hub.clone())),
        smtp_config(site, &hub.hostname, Listener::Hub, tls, cfg.require_tls),
    );
    reload_secret_on_sighup(name, site, hub.delivery_secret.clone(), shutdown, tasks)?;
    let (reloaded, role) = (hub.clone(), name.to_string());
    on_sighup(name, shutdown, tasks, move || {
        match reloaded.reload_node_tls() {
            Ok(()) => info!(role = %role, "delivery TLS files reloaded"),
            Err(e) => {
                error!(role = %role, error = %e, "delivery TLS reload failed; keeping the files in use")
            }
        }
    })?;
    let admin = Admin {
        listener: admin_l,
        router: admin::hub_router(hub.clone()),
        tls: admin_tls,
        identity: cfg.tls.clone(),
    };
    spawn_listeners(tasks, name, smtp, admin, site, shutdown);
    hub.spawn_housekeeping(shutdown.clone());
    Ok(vec![smtp_e, admin_e])
}

/// Opens node `name` under `data/<name>` and starts its SMTP and admin listeners in `tasks`.
pub async fn start_node(
    site: &Arc<Site>,
    name: &str,
    data: &Path,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(Vec<Endpoint>, Arc<MailboxNode>), StartError> {
    let (cms, cfg) = site.node(name).ok_or_else(|| unknown(site, "node", name))?;
    let cfg = cfg.clone();
    let (smtp_l, smtp_e) = bind(name, "smtp", cfg.smtp).await?;
    let (admin_l, admin_e) = bind(name, "admin", cfg.admin).await?;
    // Under delivery_tls = "mutual" only a client with a certificate from the site's CA (a hub)
    // completes STARTTLS, and nothing is taken without it.
    let hubs_certified = (site.delivery_tls == DeliveryTls::Mutual).then_some(site.tls_ca.as_ref());
    let tls = start_tls(
        name,
        cfg.tls.as_ref(),
        hubs_certified.flatten(),
        shutdown,
        tasks,
    )?;
    let admin_tls = start_admin_tls(site, name, cfg.tls.as_ref(), shutdown, tasks)?;
    let node = MailboxNode::open(site.clone(), name, cms, &data.join(name)).map_err(|source| {
        StartError::Node {
            role: name.to_string(),
            source,
        }
    })?;
    // Deliveries come from the site's hubs only, proven with the site's delivery secret.
    let secret = DeliverySecret::new(site.delivery_secret.clone());
    reload_secret_on_sighup(name, site, secret.clone(), shutdown, tasks)?;
    let mut smtp_cfg = smtp_config(site, &node.hostname, Listener::Node, tls, cfg.require_tls);
    smtp_cfg.auth = Some(DeliveryAuth {
        secret,
        users: site.hubs.iter().map(|h| h.name.clone()).collect(),
    });
    let smtp = (smtp_l, Arc::new(NodeInbound(node.clone())), smtp_cfg);
    let admin = Admin {
        listener: admin_l,
        router: admin::node_router(node.clone()),
        tls: admin_tls,
        identity: cfg.tls.clone(),
    };
    spawn_listeners(tasks, name, smtp, admin, site, shutdown);
    crate::node::driver::spawn(node.clone(), shutdown.clone());
    Ok((vec![smtp_e, admin_e], node))
}

fn unknown(site: &Site, kind: &'static str, name: &str) -> StartError {
    let known: Vec<String> = match kind {
        "hub" => site.hubs.iter().map(|h| h.name.clone()).collect(),
        _ => site
            .cms
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| n.name.clone()))
            .collect(),
    };
    StartError::UnknownRole {
        file: site.file.display().to_string(),
        kind,
        name: name.to_string(),
        known: known.join(", "),
    }
}

/// The HTTPS side of a role's admin API (`admin_tls`): its own reloadable configuration, which
/// also verifies clients under `admin_tls = "mutual"`.
fn start_admin_tls(
    site: &Site,
    role: &str,
    files: Option<&TlsFiles>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<Option<Arc<ServerTls>>, StartError> {
    match site.admin_tls {
        AdminTls::Off => Ok(None),
        AdminTls::On => start_tls(role, files, None, shutdown, tasks),
        AdminTls::Mutual => start_tls(role, files, site.tls_ca.as_ref(), shutdown, tasks),
    }
}

/// A role's admin listener and what it serves.
struct Admin {
    listener: TcpListener,
    router: axum::Router,
    /// HTTPS, with `admin_tls`.
    tls: Option<Arc<ServerTls>>,
    /// The role's certificate, which its dashboard presents to the other roles.
    identity: Option<TlsFiles>,
}

/// Serves a role's SMTP listener (with its backend) and admin listener (with its router).
fn spawn_listeners<B: smtp::Backend>(
    tasks: &mut JoinSet<()>,
    role: &str,
    (smtp_l, backend, smtp_cfg): (TcpListener, Arc<B>, SmtpConfig),
    admin: Admin,
    site: &Arc<Site>,
    shutdown: &CancellationToken,
) {
    spawn_smtp(tasks, role, smtp_l, backend, smtp_cfg, shutdown);
    spawn_admin(tasks, role, admin, site, shutdown);
}

fn spawn_smtp<B: smtp::Backend>(
    tasks: &mut JoinSet<()>,
    role: &str,
    listener: TcpListener,
    backend: Arc<B>,
    cfg: SmtpConfig,
    shutdown: &CancellationToken,
) {
    let role = role.to_string();
    let stop = shutdown.clone().cancelled_owned();
    let on_error = shutdown.clone();
    tasks.spawn(async move {
        if let Err(e) = smtp::serve(listener, backend, cfg, stop).await {
            error!(role = %role, error = %e, "SMTP listener failed; shutting down");
            on_error.cancel();
        }
    });
}

fn spawn_admin(
    tasks: &mut JoinSet<()>,
    role: &str,
    admin: Admin,
    site: &Arc<Site>,
    shutdown: &CancellationToken,
) {
    let role = role.to_string();
    let app = admin::dashboard::mount(admin.router, site.clone(), admin.identity);
    let stop = shutdown.clone().cancelled_owned();
    let on_error = shutdown.clone();
    let listener = admin.listener;
    let tls = admin.tls;
    tasks.spawn(async move {
        let served = match tls {
            Some(tls) => admin::https::serve_tls(listener, app, tls, stop).await,
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
        };
        if let Err(e) = served {
            error!(role = %role, error = %e, "admin listener failed; shutting down");
            on_error.cancel();
        }
    });
}

/// Registers for Ctrl-C and SIGTERM now (so a signal that arrives right after start-up is caught)
/// and returns a future that resolves on the first of them.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("shutting down");
    })
}
