//! The one loop that installs kernel routes: it keeps the routes with our protocol id
//! ([`ROUTE_PROTOCOL`](super::netlink::ROUTE_PROTOCOL)) equal to a desired set, normally
//! [`RouteTable::desired`](crate::routes::RouteTable::desired).
//!
//! Level-triggered, like a controller: each pass dumps the links and our routes, computes
//! [`routes::diff`] and applies it (deletes first, then adds with `NLM_F_REPLACE`), whatever
//! happened before. A pass runs when the desired set changes and when the kernel reports a
//! change that can matter: a route of ours changed by someone else (it comes back), a link that
//! appears, goes or changes (routes waiting for their device get it; IPv4 drops the routes
//! through a link that goes down without a notification), an address (routes through a gateway
//! depend on them). A burst of changes makes one pass. There is no periodic dump: a pass that
//! failed is retried with a backoff from 100 ms to 5 s, each distinct error logged once. A route
//! whose device is missing or down is not an error: it waits for a link change.
//!
//! The reconciler owns every route with our protocol id in its network namespace: routes of
//! ours that are not desired are deleted (also those a crashed run left behind), and
//! [`RouteReconciler::shutdown`] removes all of them.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::netlink::{kernel_errno, Change, Changes, Netlink};
use crate::routes::{self, DesiredRoutes, RouteOwner};

/// The first retry after a failed pass; each further failure doubles it up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long a pass waits after the first kernel change, so that the rest of a burst (a link
/// with its addresses and routes, a flush) is handled by the same pass.
const COALESCE: Duration = Duration::from_millis(5);

/// What the reconciler did last, for `vpn-daemon status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcilerStats {
    /// Desired routes that the kernel holds as desired after the last pass.
    pub installed: usize,
    /// Desired routes waiting for their device to exist and be up.
    pub unresolved: usize,
    /// Operations (adds, deletes, the dump) that failed in the last pass; retried with backoff.
    pub failing: usize,
    /// Passes so far; each dumps the links and routes once.
    pub passes: u64,
    /// One error of the last pass (route and owner included), `None` after a pass without.
    pub last_error: Option<String>,
    /// Whether kernel changes are still seen. Once the notification socket fails, a route
    /// deleted behind our back returns only with the next pass for another reason.
    pub watching: bool,
}

/// The route reconciler's handle: hands it desired sets, reads its stats, stops it.
///
/// Dropping it without [`RouteReconciler::shutdown`] also makes the task remove our routes and
/// end, unawaited.
#[derive(Debug)]
pub struct RouteReconciler {
    desired: watch::Sender<DesiredRoutes>,
    stats: watch::Receiver<ReconcilerStats>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RouteReconciler {
    /// Starts the reconciler on the current tokio runtime with an empty desired set (so the
    /// first pass deletes every route of ours that is left). Its notification socket is opened
    /// here, in the calling thread's network namespace, which must be `netlink`'s.
    pub fn spawn(netlink: Arc<Netlink>) -> anyhow::Result<RouteReconciler> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("the route reconciler runs on a tokio runtime, and there is none")?;
        let changes = netlink.subscribe()?;
        let (desired, desired_rx) = watch::channel(DesiredRoutes::new());
        let (stats_tx, stats) = watch::channel(ReconcilerStats {
            watching: true,
            ..ReconcilerStats::default()
        });
        let task = runtime.spawn(
            Task {
                netlink,
                desired: desired_rx,
                changes: Some(changes),
                stats: stats_tx,
                errors: ErrorLog::default(),
                backoff: Backoff::default(),
            }
            .run(),
        );
        Ok(RouteReconciler {
            desired,
            stats,
            task,
        })
    }

    /// Makes `desired` the set the kernel should hold. Cheap and synchronous: the task picks
    /// it up; an unchanged set wakes nobody.
    pub fn set(&self, desired: DesiredRoutes) {
        self.desired.send_if_modified(|current| {
            if *current == desired {
                return false;
            }
            *current = desired;
            true
        });
    }

    pub fn stats(&self) -> ReconcilerStats {
        self.stats.borrow().clone()
    }

    /// Removes every route with our protocol id and ends the task.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let RouteReconciler { desired, task, .. } = self;
        // The task sees the channel close once its pass (if one runs) is done.
        drop(desired);
        task.await.context("the route reconciler task")?
    }
}

struct Task {
    netlink: Arc<Netlink>,
    desired: watch::Receiver<DesiredRoutes>,
    /// `None` once the notification socket failed.
    changes: Option<Changes>,
    stats: watch::Sender<ReconcilerStats>,
    errors: ErrorLog,
    backoff: Backoff,
}

impl Task {
    async fn run(mut self) -> anyhow::Result<()> {
        loop {
            let desired = self.desired.borrow_and_update().clone();
            let retry = self.pass(&desired).await;
            if !self.wait(retry).await {
                break;
            }
        }
        remove_all(&self.netlink).await
    }

    /// One reconcile pass; returns when to retry if anything failed.
    async fn pass(&mut self, desired: &DesiredRoutes) -> Option<Duration> {
        let outcome = apply(&self.netlink, desired).await;
        for failure in self.errors.update(&outcome.failures) {
            tracing::warn!(
                what = %failure.what,
                owner = failure.owner.as_ref().map(tracing::field::display),
                error = %failure.error,
                "route reconcile: failed; retrying with backoff",
            );
        }
        let failing = outcome.failures.len();
        self.stats.send_modify(|stats| {
            stats.passes += 1;
            if let Some(counts) = outcome.counts {
                stats.installed = counts.installed;
                stats.unresolved = counts.unresolved;
            }
            stats.failing = failing;
            stats.last_error = outcome
                .failures
                .first()
                .map(|failure| format!("{}: {}", failure.what, failure.error));
        });
        if failing == 0 {
            self.backoff.reset();
            None
        } else {
            Some(self.backoff.failed())
        }
    }

    /// Waits for a reason for the next pass: the desired set changed, the kernel changed, or
    /// `retry` elapsed. Returns false when the desired set's sender is gone (shutdown).
    async fn wait(&mut self, retry: Option<Duration>) -> bool {
        let retry_at = retry.map(|delay| Instant::now() + delay);
        tokio::select! {
            changed = self.desired.changed() => changed.is_ok(),
            change = next_change(&mut self.changes) => {
                match change {
                    Some(change) => {
                        tracing::trace!(?change, "route reconcile: kernel change");
                        self.coalesce().await;
                    }
                    None => {
                        tracing::error!(
                            "route reconcile: the netlink notification socket failed; routes \
                             deleted by others come back only with the next pass"
                        );
                        self.changes = None;
                        self.stats.send_modify(|stats| stats.watching = false);
                    }
                }
                true
            }
            () = sleep_until(retry_at) => true,
        }
    }

    /// Lets the rest of a burst of kernel changes arrive, then consumes it.
    async fn coalesce(&mut self) {
        tokio::time::sleep(COALESCE).await;
        if let Some(changes) = &mut self.changes {
            while changes.try_next().is_some() {}
        }
    }
}

async fn next_change(changes: &mut Option<Changes>) -> Option<Change> {
    match changes {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What one pass did.
struct Outcome {
    /// `None` when the dump failed (nothing known).
    counts: Option<Counts>,
    failures: Vec<Failure>,
}

struct Counts {
    installed: usize,
    unresolved: usize,
}

/// One operation of a pass that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// The operation and its route, as the log shows them.
    what: String,
    owner: Option<RouteOwner>,
    error: String,
}

/// Dumps, diffs and applies: deletes first (the metric of a replaced route may differ, and then
/// `NLM_F_REPLACE` would add beside it), then adds.
async fn apply(netlink: &Netlink, desired: &DesiredRoutes) -> Outcome {
    let dumped = async {
        let links = netlink.up_links().await?;
        let installed = netlink.installed_routes().await?;
        anyhow::Ok((links, installed))
    };
    let (links, installed) = match dumped.await {
        Ok(dumped) => dumped,
        Err(error) => {
            return Outcome {
                counts: None,
                failures: vec![Failure {
                    what: "dumping links and routes".into(),
                    owner: None,
                    error: format!("{error:#}"),
                }],
            }
        }
    };
    let diff = routes::diff(desired, &installed, |device| links.get(device).copied());
    let mut failures = Vec::new();
    for route in &diff.delete {
        match netlink.delete_installed_route(route).await {
            Ok(()) => tracing::debug!(route = ?route, "route reconcile: deleted"),
            Err(error) => failures.push(Failure {
                what: format!("deleting {} dev #{}", route.destination, route.ifindex),
                owner: None,
                error: format!("{error:#}"),
            }),
        }
    }
    let mut installed = desired.len() - diff.add.len() - diff.unresolved.len();
    let mut unresolved = diff.unresolved.len();
    for (route, ifindex) in &diff.add {
        let result = netlink
            .replace_route(
                route.destination,
                route.gateway,
                *ifindex,
                Some(route.metric),
            )
            .await;
        match result {
            Ok(()) => {
                installed += 1;
                tracing::debug!(route = %route, "route reconcile: installed");
            }
            // The link went (or went down) since the dump: wait for its change, like any
            // route whose device is missing.
            Err(error) if matches!(kernel_errno(&error), Some(libc::ENODEV | libc::ENETDOWN)) => {
                unresolved += 1;
            }
            Err(error) => failures.push(Failure {
                what: format!("installing {route}"),
                owner: Some(route.owner.clone()),
                error: format!("{error:#}"),
            }),
        }
    }
    Outcome {
        counts: Some(Counts {
            installed,
            unresolved,
        }),
        failures,
    }
}

/// Deletes every route with our protocol id.
async fn remove_all(netlink: &Netlink) -> anyhow::Result<()> {
    let installed = netlink
        .installed_routes()
        .await
        .context("listing our routes to remove them")?;
    let mut errors = Vec::new();
    for route in &installed {
        if let Err(error) = netlink.delete_installed_route(route).await {
            errors.push(format!("{error:#}"));
        }
    }
    anyhow::ensure!(
        errors.is_empty(),
        "removing our routes: {}",
        errors.join("; ")
    );
    Ok(())
}

/// Remembers which failures have been logged, so that a route refused on every retry is logged
/// once, and again only when its error changes.
#[derive(Debug, Default)]
struct ErrorLog {
    logged: BTreeMap<String, String>,
}

impl ErrorLog {
    /// Takes the failures of a pass; returns those to log (new, or with another error than
    /// last time). An operation that stopped failing is forgotten, and logged again if it
    /// fails again.
    fn update<'a>(&mut self, failures: &'a [Failure]) -> Vec<&'a Failure> {
        let previous = std::mem::take(&mut self.logged);
        let mut fresh = Vec::new();
        for failure in failures {
            if previous.get(&failure.what) != Some(&failure.error) {
                fresh.push(failure);
            }
            self.logged
                .insert(failure.what.clone(), failure.error.clone());
        }
        fresh
    }
}

/// The delay before the next retry: [`RETRY_FIRST`], doubling per failed pass up to
/// [`RETRY_MAX`], back to the start after a pass without failures.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: RETRY_FIRST }
    }
}

impl Backoff {
    fn failed(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(RETRY_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = RETRY_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(what: &str, error: &str) -> Failure {
        Failure {
            what: what.into(),
            owner: None,
            error: error.into(),
        }
    }

    #[test]
    fn each_distinct_error_is_logged_once() {
        let mut log = ErrorLog::default();
        let unreachable = failure("installing 10.9.0.0/16", "Network is unreachable");
        let other = failure("installing 10.8.0.0/16", "Invalid argument");
        let once = std::slice::from_ref(&unreachable);
        assert_eq!(log.update(once), [&unreachable]);
        assert!(log.update(once).is_empty());
        assert_eq!(log.update(&[unreachable.clone(), other.clone()]), [&other]);
        let changed = failure("installing 10.9.0.0/16", "Invalid argument");
        let changed_once = std::slice::from_ref(&changed);
        assert_eq!(log.update(changed_once), [&changed]);
        // Healed, then failing again: logged again.
        assert!(log.update(&[]).is_empty());
        assert_eq!(log.update(changed_once), [&changed]);
    }

    #[test]
    fn backoff_doubles_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.failed()).collect();
        assert_eq!(delays[..3], [RETRY_FIRST, RETRY_FIRST * 2, RETRY_FIRST * 4]);
        assert_eq!(delays[7], RETRY_MAX);
        assert!(delays.windows(2).all(|pair| pair[0] <= pair[1]));
        backoff.reset();
        assert_eq!(backoff.failed(), RETRY_FIRST);
    }
}
