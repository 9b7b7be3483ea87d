//! The hub transport role: SMTP in → durable queue → delivery to the active node of each recipient's
//! CMS → dumpster copy per storage group.
//!
//! A message's life: [`inbound`] accepts it once the backlog allows ([`flow`]; a silent next hop
//! does not count, [`reach`]); the [`writer`] thread stores it, in a batch with what other
//! sessions received meanwhile, and makes it durable before the 250; a delivery task sends it
//! ([`delivery`]), passing by nodes that do not answer; the outcome of every attempt is
//! recorded (again batched by the writer) atomically with the dumpster entries it creates; temporary failures go to the
//! retry [`scheduler`]; permanent ones, and deliveries the sender asked to hear about (RFC 3461
//! NOTIFY), to a [`dsn`] for the sender (never for a resubmitted copy). An administrator can hold,
//! release, retry or delete a queued message ([`queue`]).

mod claims;
pub mod commit;
pub mod delivery;
pub mod dsn;
pub mod flow;
pub mod inbound;
pub mod metrics;
pub mod node_tls;
pub mod queue;
pub mod reach;
pub mod resubmit;
pub mod scheduler;
pub mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use store::hub::{
    DumpsterEntry, DumpsterLimits, HubStore, HubStoreError, MessageDsn, Millis, NewMessage,
    QueuedMessage, RcptDsn, RcptStatus, Recipient, Recovery, ResubmitFilter,
};
use tokio::sync::Semaphore;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::clock::now_ms;
use crate::config::Site;
use crate::smtp::DeliverySecret;
use crate::space::Space;
use commit::GroupCommit;
use delivery::{CmsLink, Outcome, Taken};
use dsn::{Action, Notice};
use flow::{Admission, InFlow, Token};
use metrics::HubMetrics;
use scheduler::Scheduler;

/// How often the store is probed for a disk error it must be opened again after.
const RECOVER_EVERY: Duration = Duration::from_secs(1);

/// How often delivered bodies' disk is given back: often enough that a hub's disk follows its
/// dumpster bound within seconds, rarely enough that a round's flush costs nothing noticeable.
const COMPACT_EVERY: Duration = Duration::from_secs(2);
/// Deliveries in flight at once per hub; bounds memory and connections to the nodes.
const MAX_INFLIGHT: usize = 64;
/// New messages that may wait for their first delivery attempt before intake is slowed
/// (in_flow_delay): twice what can be in flight, so the deliveries never run dry.
const IN_FLOW_BACKLOG: usize = 2 * MAX_INFLIGHT;
/// The largest body a first attempt takes from the session rather than the store: bodies kept
/// that way for the backlog take at most `IN_FLOW_BACKLOG` times this much memory.
const FRESH_BODY_MAX: usize = 1 << 20;

/// Why a hub operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The store refused a read or write.
    #[error(transparent)]
    Store(#[from] HubStoreError),
    /// The fsync behind a 250 failed.
    #[error(transparent)]
    Commit(#[from] commit::CommitError),
    /// A blocking store task died.
    #[error("store task failed: {0}")]
    Task(String),
    /// An administrator's hold or delete found a delivery attempt of the message under way.
    #[error("message {} is being delivered right now; try again", queue::QueueId(*.0))]
    Busy(u64),
    /// The TLS settings for delivery to the nodes cannot be used.
    #[error(transparent)]
    NodeTls(#[from] node_tls::NodeTlsError),
    /// The thread that writes the queue could not be started.
    #[error("cannot start the queue writer: {0}")]
    Writer(std::io::Error),
    /// A resubmission window this hub cannot serve (it ends before it starts).
    #[error(transparent)]
    Window(#[from] crate::clock::window::WindowError),
}

/// One running hub: its store, links to the CMSs and delivery machinery.
pub struct Hub {
    /// This hub's name in the site.
    pub name: String,
    /// The site it serves.
    pub site: Arc<Site>,
    /// Host name used in greetings, Received headers and generated Message-IDs.
    pub hostname: String,
    /// The queue and dumpster.
    pub store: Arc<HubStore>,
    /// Its Prometheus metrics, served at /metrics.
    pub metrics: HubMetrics,
    /// Free space where the store is, against `min_free_space`: below it new mail gets 452.
    pub space: Space,
    /// What this hub proves itself to nodes with; replaced on SIGHUP from `delivery_secret_file`.
    pub delivery_secret: DeliverySecret,
    commit: GroupCommit,
    writer: writer::Writer,
    links: Vec<CmsLink>,
    scheduler: Scheduler,
    inflight: Arc<Semaphore>,
    /// Slots for attempts that talk to no node (every next hop passed by): as many as for
    /// deliveries, so they bound memory alike, but apart, so they never wait behind deliveries
    /// hanging on a silent node.
    passing: Arc<Semaphore>,
    in_flow: InFlow,
    /// Messages an attempt, hold or delete is working on, so those never overlap.
    claims: claims::Claims,
    /// Resubmission requests a task is working on.
    resubmitting: resubmit::Resubmitting,
}

impl Hub {
    /// Opens the hub's store under `dir` and starts its flusher and retry scheduler; queued messages
    /// from a previous run are scheduled again.
    pub fn open(site: Arc<Site>, name: &str, dir: &Path) -> Result<Arc<Hub>, HubError> {
        let node_tls = node_tls::NodeTls::for_hub(&site, name)?;
        let store = Arc::new(HubStore::open(dir, site.store_cache_size)?);
        let writer = writer::Writer::start(store.clone(), name).map_err(HubError::Writer)?;
        let flusher = store.clone();
        let commit = GroupCommit::start(move || flusher.flush().map_err(|e| e.to_string()));
        let hostname = site.hub_hostname(name);
        let delivery_secret = DeliverySecret::new(site.delivery_secret.clone());
        let links = site
            .cms
            .iter()
            .map(|c| {
                let auth = (name.to_string(), delivery_secret.clone());
                CmsLink::new(c, &hostname, &node_tls, site.node_connect_timeout, auth)
            })
            .collect::<Result<_, _>>()?;
        let (scheduler, due) = Scheduler::new();
        let in_flow = InFlow::new(IN_FLOW_BACKLOG, site.in_flow_delay);
        let space = Space::new(vec![dir.to_path_buf()], site.min_free_space);
        let hub = Arc::new(Hub {
            name: name.to_string(),
            site,
            hostname,
            store,
            metrics: HubMetrics::new(name),
            space,
            delivery_secret,
            commit,
            writer,
            links,
            scheduler,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            passing: Arc::new(Semaphore::new(MAX_INFLIGHT)),
            in_flow,
            claims: claims::Claims::default(),
            resubmitting: resubmit::Resubmitting::default(),
        });
        hub.schedule_queued()?;
        let runner = hub.clone();
        tokio::spawn(scheduler::run(due, move |id| {
            runner.clone().spawn_delivery(id, Token::none(), None, None)
        }));
        hub.resume_resubmissions()?;
        Ok(hub)
    }

    /// Schedules every queued message (at start, and after the store was opened again: what a
    /// failed disk kept is what is queued now).
    fn schedule_queued(&self) -> Result<(), HubError> {
        let queued = self.store.queued()?;
        if !queued.is_empty() {
            info!(hub = %self.name, messages = queued.len(), "resuming queued deliveries");
        }
        for m in queued {
            self.scheduler.at(m.next_attempt_ms, m.id);
        }
        Ok(())
    }

    /// The dumpster bounds of this site.
    pub fn limits(&self) -> DumpsterLimits {
        DumpsterLimits {
            max_bytes_per_sg: self.site.max_dumpster_size_per_storage_group,
            max_age_ms: self.site.max_dumpster_time.as_millis() as u64,
        }
    }

    /// A token for one new message from a client for `recipients`, once the backlog of messages
    /// not yet attempted allows it or `in_flow_delay` has passed; [`Hub::submit`] keeps it until
    /// the first attempt ends. A message for a CMS whose next hop does not answer
    /// ([`CmsLink::answering`]) gets none, at once: its first attempt would be a wait on that node,
    /// not work of this hub, and the queue is there to absorb a mailbox outage.
    pub async fn admit(&self, recipients: &[Recipient]) -> Token {
        let answering = recipients.iter().all(|r| {
            self.links
                .iter()
                .find(|l| l.name() == r.cms)
                .is_none_or(CmsLink::answering)
        });
        if !answering {
            return Token::none();
        }
        let (token, how) = self.in_flow.admit().await;
        if how != Admission::Immediate {
            self.metrics.in_flow_delayed();
        }
        token
    }

    /// Stores a new message durably and starts its delivery; returns its queue id only once the
    /// message is on disk. `dsn` is the sender's RET and ENVID, kept for the reports; `token` is
    /// the message's place in the backlog ([`Hub::admit`]).
    pub async fn submit(
        self: &Arc<Self>,
        token: Token,
        message_id: String,
        sender: String,
        dsn: MessageDsn,
        recipients: Vec<Recipient>,
        body: Vec<u8>,
    ) -> Result<u64, HubError> {
        let now = now_ms();
        let new = NewMessage {
            message_id,
            sender,
            received_ms: now,
            expires_ms: now + self.site.message_expiry.as_millis() as u64,
            recipients,
            dsn,
        };
        let (queued, body) = self.writer.enqueue(new, body, now).await?;
        self.metrics.received();
        // The first attempt takes the body from here rather than from the store while the token
        // bounds how many wait (an overdue admission holds none) and the body is small enough.
        let fresh = (token.holds_place() && body.len() <= FRESH_BODY_MAX).then_some(body);
        let talks = self.talks_to_a_node(&queued);
        self.clone()
            .spawn_delivery(queued.id, token, fresh, Some(talks));
        Ok(queued.id)
    }

    /// Makes everything written so far durable (shutdown, resubmission bookkeeping).
    pub async fn durable(&self) -> Result<(), HubError> {
        Ok(self.commit.durable().await?)
    }

    /// Schedules a message id for an attempt at `due_ms` (resubmission re-queues through this).
    pub fn schedule(&self, due_ms: Millis, id: u64) {
        self.scheduler.at(due_ms, id);
    }

    /// Attempts message `id` in its own task; `token` is given back when the attempt ends.
    /// `fresh` is the body just stored, if the caller still has it; `talks` whether the attempt
    /// would open to a node ([`Hub::talks_to_a_node`]), if the caller has the message at hand.
    fn spawn_delivery(
        self: Arc<Self>,
        id: u64,
        token: Token,
        fresh: Option<Vec<u8>>,
        talks: Option<bool>,
    ) {
        tokio::spawn(async move {
            let _token = token;
            // The delivery slots are for talking to nodes. An attempt that will talk to none
            // (every next hop silent, or failed and being probed) is deferred at once, rather than
            // wait behind the attempts hanging on that hop and end with all of them at once. A
            // message that cannot be read here gets a slot; its attempt finds out.
            let talks = talks.unwrap_or_else(|| match self.store.get(id) {
                Ok(Some(msg)) => self.talks_to_a_node(&msg),
                _ => true,
            });
            let slots = if talks { &self.inflight } else { &self.passing };
            let Ok(_permit) = slots.clone().acquire_owned().await else {
                return;
            };
            if let Err(e) = self.attempt(id, fresh).await {
                warn!(queue_id = id, error = %e, "delivery attempt could not be recorded; retrying");
                self.scheduler
                    .at(now_ms() + self.site.retry_min.as_millis() as u64, id);
            }
        });
    }

    /// Whether an attempt of `msg` now would open to a node of one of its pending recipients'
    /// CMSs ([`CmsLink::worth_trying`]).
    fn talks_to_a_node(&self, msg: &QueuedMessage) -> bool {
        msg.recipients
            .iter()
            .filter(|r| is_pending(&r.status))
            .any(|r| {
                self.links
                    .iter()
                    .find(|l| l.name() == r.cms)
                    .is_none_or(CmsLink::worth_trying)
            })
    }

    /// One delivery attempt of every pending recipient of queued message `id`; its body is `fresh`
    /// or else read from the store.
    async fn attempt(self: &Arc<Self>, id: u64, fresh: Option<Vec<u8>>) -> Result<(), HubError> {
        // Whoever has the message claimed schedules it again if it still needs an attempt.
        let Some(_claim) = self.claims.try_claim(id) else {
            return Ok(());
        };
        let Some(mut msg) = self.store.get(id)? else {
            return Ok(());
        };
        // Neither attempted nor expired while held; the release schedules it again.
        if msg.is_held() {
            return Ok(());
        }
        let span =
            info_span!("deliver", queue_id = id, message_id = %msg.message_id, hub = %self.name);
        async move {
            let body = match fresh {
                Some(body) => body,
                None => self.store.body(msg.blob)?.unwrap_or_default(),
            };
            let now = now_ms();
            let mut notices = Vec::new();
            let delivered_now = if now >= msg.expires_ms {
                expire(&mut msg, now, &mut notices);
                Vec::new()
            } else {
                self.deliver_pending(&mut msg, &body, &mut notices).await
            };
            let indices: Vec<usize> = delivered_now.iter().map(|(i, _)| *i).collect();
            let delivered = self.dumpster_entries(&msg, &indices, now_ms());
            msg.attempts += 1;
            let pending = msg.recipients.iter().any(|r| is_pending(&r.status));
            if pending {
                msg.next_attempt_ms = now_ms() + self.backoff(msg.attempts);
            }
            self.writer
                .record(msg.clone(), delivered, self.limits())
                .await?;
            // After the dumpster holds it: a newer epoch noted before this read is seen here, one
            // noted after it reads the dumpster after this write (`note_epoch`).
            self.resubmit_late_acks(&msg, &delivered_now).await;
            if pending {
                self.scheduler.at(msg.next_attempt_ms, msg.id);
            }
            if !notices.is_empty() {
                self.return_to_sender(&msg, &body, &notices).await;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Tries every pending recipient, grouped per CMS; returns the indices delivered now, each
    /// with the node (and its epoch) that took it.
    async fn deliver_pending(
        &self,
        msg: &mut QueuedMessage,
        body: &[u8],
        notices: &mut Vec<Notice>,
    ) -> Vec<(usize, Option<Taken>)> {
        let mut delivered = Vec::new();
        let mut by_cms: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in msg.recipients.iter().enumerate() {
            if is_pending(&r.status) {
                by_cms.entry(r.cms.clone()).or_default().push(i);
            }
        }
        for (cms, idxs) in by_cms {
            let Some(link) = self.links.iter().find(|l| l.name() == cms) else {
                for &i in &idxs {
                    set_outcome(
                        msg,
                        i,
                        Outcome::Permanent {
                            code: 550,
                            reason: format!("CMS {cms} is no longer in the site configuration"),
                        },
                        None,
                        notices,
                    );
                }
                continue;
            };
            let addrs: Vec<String> = idxs
                .iter()
                .map(|&i| msg.recipients[i].address.clone())
                .collect();
            let (outcomes, taken) = link.deliver(&msg.sender, &addrs, body).await;
            let node = taken.as_ref().map(|t| t.node.clone());
            for (&i, outcome) in idxs.iter().zip(outcomes) {
                match &outcome {
                    Outcome::Delivered => {
                        delivered.push((i, taken.clone()));
                        self.metrics.delivered();
                        // A resubmitted copy keeps its original receive time: not a latency.
                        if msg.resubmission.is_none() {
                            let took = now_ms().saturating_sub(msg.received_ms);
                            self.metrics.latency(Duration::from_millis(took));
                        }
                        info!(rcpt = %msg.recipients[i].address, storage_group = %msg.recipients[i].storage_group, node = node.as_deref().unwrap_or(""), "delivered");
                    }
                    Outcome::Transient(e) => {
                        self.metrics.deferred();
                        info!(rcpt = %msg.recipients[i].address, error = %e, "deferred");
                    }
                    Outcome::Permanent { code, reason } => {
                        self.metrics.failed();
                        warn!(rcpt = %msg.recipients[i].address, code, reason = %reason, "failed");
                    }
                }
                set_outcome(msg, i, outcome, node.as_deref(), notices);
            }
        }
        delivered
    }

    /// Reads the hub's TLS files for delivery (`tls_ca`, and its certificate under
    /// `delivery_tls = "mutual"`) again, for the next connection to each node (SIGHUP after a
    /// renewal). On error the files in use stay.
    pub fn reload_node_tls(&self) -> Result<(), node_tls::NodeTlsError> {
        let tls = node_tls::NodeTls::for_hub(&self.site, &self.name)?;
        self.links.iter().try_for_each(|l| l.secure_with(&tls))
    }

    /// A node of a CMS mounted at `epoch` asked this hub to resubmit storage group `sg`: a `250`
    /// from an older epoch of that CMS arriving from now on was held up past the failover (a
    /// pause between the node's last authority check and its reply), and its message may be in
    /// no history the new active has. Noted before the request reads the dumpster.
    pub fn note_epoch(&self, sg: &str, epoch: u64) {
        let cms = self
            .site
            .cms
            .iter()
            .find(|c| c.storage_groups.iter().any(|g| g.name == sg));
        if let Some(link) = cms.and_then(|c| self.links.iter().find(|l| l.name() == c.name)) {
            link.note_epoch(epoch);
        }
    }

    /// Delivers again what a superseded epoch acknowledged ([`Hub::note_epoch`]): a resubmission
    /// request of this message's dumpster entries for each storage group concerned. The new
    /// active drops it if it has it already.
    async fn resubmit_late_acks(
        self: &Arc<Self>,
        msg: &QueuedMessage,
        delivered: &[(usize, Option<Taken>)],
    ) {
        let mut late: BTreeMap<String, (String, u64, u64)> = BTreeMap::new();
        for (i, taken) in delivered {
            let Some(t) = taken else { continue };
            let r = &msg.recipients[*i];
            let Some(link) = self.links.iter().find(|l| l.name() == r.cms) else {
                continue;
            };
            if let (Some(newer), Some(acked)) = (link.superseded(t.epoch), t.epoch) {
                late.insert(r.storage_group.clone(), (t.node.clone(), acked, newer));
            }
        }
        for (sg, (node, acked, newer)) in late {
            warn!(storage_group = %sg, node = %node, acked_epoch = acked, newer_epoch = newer, "acknowledged in an epoch a newer one had superseded; delivering it again");
            let filter = ResubmitFilter {
                message_id: Some(msg.message_id.clone()),
                ..ResubmitFilter::default()
            };
            // Named by the message, not this queued copy: a copy delivered again by it that met
            // the same old epoch once more redelivers nothing more (the same id is one request).
            let id = format!("late-ack-{sg}-epoch{newer}-{}", msg.message_id);
            if let Err(e) = self.resubmit(&id, &sg, (0, None), &filter).await {
                error!(storage_group = %sg, error = %e, "could not resubmit a late acknowledgement");
            }
        }
    }

    /// The dumpster entries for the recipients this attempt delivered: one per storage group. A
    /// resubmitted copy makes none, since its original entry is still in the dumpster.
    fn dumpster_entries(
        &self,
        msg: &QueuedMessage,
        delivered: &[usize],
        now: Millis,
    ) -> Vec<DumpsterEntry> {
        if msg.resubmission.is_some() {
            return Vec::new();
        }
        let mut by_sg: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for r in delivered.iter().map(|&i| &msg.recipients[i]) {
            by_sg
                .entry((r.storage_group.clone(), r.cms.clone()))
                .or_default()
                .push(r.address.clone());
        }
        by_sg
            .into_iter()
            .map(|((storage_group, cms), recipients)| DumpsterEntry {
                storage_group,
                message_id: msg.message_id.clone(),
                sender: msg.sender.clone(),
                recipients,
                cms,
                received_ms: msg.received_ms,
                delivered_ms: now,
                size: msg.size,
                blob: msg.blob,
            })
            .collect()
    }

    fn backoff(&self, attempts: u32) -> Millis {
        let min = self.site.retry_min.as_millis() as u64;
        let max = self.site.retry_max.as_millis() as u64;
        min.saturating_mul(1u64 << attempts.saturating_sub(1).min(32))
            .min(max)
    }

    /// Queues a DSN for the sender, if it can be routed inside the site (a hub relays only to its
    /// CMSs), is not the null sender (RFC 5321: never bounce a bounce), and the message is not a
    /// dumpster resubmission (only logged: the sender was served by the original delivery).
    async fn return_to_sender(
        self: &Arc<Self>,
        msg: &QueuedMessage,
        body: &[u8],
        notices: &[Notice],
    ) {
        if let Some(request) = &msg.resubmission {
            // The sender had the message delivered once already: this copy only repairs a
            // mailbox server's loss, so its failure is the operator's concern, not the sender's.
            for n in notices {
                if let Action::Failed { code, reason } = &n.action {
                    warn!(message_id = %msg.message_id, request = %request, rcpt = %n.address, code, reason = %reason, "a resubmitted copy could not be delivered; not returned to the sender, who had it delivered before");
                }
            }
            return;
        }
        if msg.sender.is_empty() {
            return;
        }
        let Some(route) = self.site.route(&msg.sender) else {
            warn!(sender = %msg.sender, "no route to the sender inside the site; the DSN is dropped");
            return;
        };
        let now = Utc::now();
        let dsn_id = format!(
            "<dsn.{}.{}@{}>",
            msg.id,
            now.timestamp_millis(),
            self.hostname
        );
        let report = dsn::Report {
            reporting_mta: &self.hostname,
            original_message_id: &msg.message_id,
            to: &msg.sender,
            envid: msg.dsn.envid.as_deref(),
            ret: msg.dsn.ret,
            arrival: dsn::date(msg.received_ms),
            notices,
            original: body,
        };
        let rcpt = Recipient {
            address: msg.sender.clone(),
            cms: self.site.cms[route.cms].name.clone(),
            storage_group: route.storage_group,
            status: RcptStatus::Pending,
            dsn: RcptDsn::default(),
        };
        let rendered = report.render(&dsn_id, now);
        let submit = self.submit(
            Token::none(),
            dsn_id.clone(),
            String::new(),
            MessageDsn::default(),
            vec![rcpt],
            rendered,
        );
        match Box::pin(submit).await {
            Ok(_) => {
                self.metrics.dsn();
                info!(dsn = %dsn_id, to = %msg.sender, "delivery status notification queued");
            }
            Err(e) => warn!(error = %e, "could not queue the DSN"),
        }
    }
}

fn is_pending(s: &RcptStatus) -> bool {
    matches!(s, RcptStatus::Pending | RcptStatus::Deferred { .. })
}

/// Records one recipient's outcome, and the notice for its sender if its NOTIFY asks for one;
/// `node` is the mailbox node that answered.
fn set_outcome(
    msg: &mut QueuedMessage,
    i: usize,
    outcome: Outcome,
    node: Option<&str>,
    notices: &mut Vec<Notice>,
) {
    let now = now_ms();
    let r = &mut msg.recipients[i];
    let action = match &outcome {
        Outcome::Delivered => Some(Action::Delivered),
        Outcome::Transient(_) => None,
        Outcome::Permanent { code, reason } => Some(Action::Failed {
            code: *code,
            reason: reason.clone(),
        }),
    };
    r.status = match outcome {
        Outcome::Delivered => RcptStatus::Delivered { at_ms: now },
        Outcome::Transient(reason) => RcptStatus::Deferred { reason },
        Outcome::Permanent { code, reason } => RcptStatus::Failed {
            code,
            reason,
            at_ms: now,
        },
    };
    if let Some(action) = action {
        notices.extend(Notice::requested(r, action, node, dsn::date(now)));
    }
}

fn expire(msg: &mut QueuedMessage, now: Millis, notices: &mut Vec<Notice>) {
    for r in msg.recipients.iter_mut().filter(|r| is_pending(&r.status)) {
        let last = match &r.status {
            RcptStatus::Deferred { reason } => reason.clone(),
            _ => "never attempted".to_string(),
        };
        let reason = format!(
            "4.4.7 message expired after {}; last error: {last}",
            humantime::format_duration(
                Duration::from_millis(now.saturating_sub(msg.received_ms)) / 1000 * 1000
            )
        );
        let action = Action::Failed {
            code: 554,
            reason: reason.clone(),
        };
        notices.extend(Notice::requested(r, action, None, dsn::date(now)));
        r.status = RcptStatus::Failed {
            code: 554,
            reason,
            at_ms: now,
        };
    }
}

impl Hub {
    /// Probes the store every [`RECOVER_EVERY`]: sled fails every write after one disk error
    /// (a disk that filled to the last byte) until it is opened again, which this does as soon
    /// as it can be written, and then schedules again what the reopened queue holds.
    fn spawn_store_recovery(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECOVER_EVERY);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let store = hub.store.clone();
                match tokio::task::spawn_blocking(move || store.recover()).await {
                    Ok(Ok(Recovery::Healthy)) => failing = false,
                    Ok(Ok(Recovery::Reopened)) => {
                        failing = false;
                        if let Err(e) = hub.schedule_queued() {
                            warn!(hub = %hub.name, error = %e, "cannot read the queue after reopening the store");
                        }
                    }
                    Ok(Err(e)) => {
                        if !failing {
                            error!(hub = %hub.name, error = %e, "hub store cannot be written; mail refused with 451 until it can (retried every second)");
                        }
                        failing = true;
                    }
                    Err(e) => warn!(hub = %hub.name, error = %e, "store recovery task failed"),
                }
            }
        });
    }

    /// Gives the disk of delivered and evicted bodies back every [`COMPACT_EVERY`]
    /// ([`HubStore::compact_bodies`]).
    fn spawn_body_compaction(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COMPACT_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let store = hub.store.clone();
                match tokio::task::spawn_blocking(move || store.compact_bodies()).await {
                    Ok(Ok(done)) if done.removed > 0 => debug!(
                        hub = %hub.name, moved = done.moved, segments = done.removed,
                        bytes = done.freed, "body segments given back"
                    ),
                    Ok(Ok(_)) => {}
                    // Failed on a disk error: the store's recovery reports and reopens it.
                    Ok(Err(store::hub::HubStoreError::Closed { .. })) => {}
                    Ok(Err(e)) => warn!(hub = %hub.name, error = %e, "body compaction failed"),
                    Err(e) => warn!(hub = %hub.name, error = %e, "body compaction task failed"),
                }
            }
        });
    }

    /// Starts the dumpster sweeper (MaxDumpsterTime), the store's recovery after a disk error,
    /// body compaction and the final flush at shutdown.
    pub fn spawn_housekeeping(self: &Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        self.spawn_store_recovery(shutdown.clone());
        self.spawn_body_compaction(shutdown.clone());
        let hub = self.clone();
        let every = (self.site.max_dumpster_time / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let store = hub.store.clone();
                        let limits = hub.limits();
                        match tokio::task::spawn_blocking(move || store.sweep_expired(now_ms(), limits)).await {
                            Ok(Ok(0)) => {}
                            Ok(Ok(n)) => info!(hub = %hub.name, entries = n, "dumpster entries expired"),
                            Ok(Err(e)) => warn!(hub = %hub.name, error = %e, "dumpster sweep failed"),
                            Err(e) => warn!(hub = %hub.name, error = %e, "dumpster sweep task failed"),
                        }
                        // Done resubmission requests, twice MaxDumpsterTime after they were made.
                        let store = hub.store.clone();
                        let keep = 2 * hub.site.max_dumpster_time.as_millis() as u64;
                        let before = now_ms().saturating_sub(keep);
                        match tokio::task::spawn_blocking(move || store.forget_resubmissions(before)).await {
                            Ok(Ok(0)) => {}
                            Ok(Ok(n)) => info!(hub = %hub.name, requests = n, "done resubmission requests forgotten"),
                            Ok(Err(e)) => warn!(hub = %hub.name, error = %e, "forgetting resubmission requests failed"),
                            Err(e) => warn!(hub = %hub.name, error = %e, "forgetting resubmission requests failed"),
                        }
                    }
                    _ = shutdown.cancelled() => {
                        if let Err(e) = hub.store.flush() {
                            warn!(hub = %hub.name, error = %e, "final flush failed");
                        }
                        return;
                    }
                }
            }
        });
    }
}
