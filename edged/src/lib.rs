//! privitty-edged: Delta Chat's JSON-RPC API over HTTP, with the Privitty license gate, Server-Sent
//! Events, and the Privitty protected-file methods.
//!
//! Owns: the daemon's life — take the socket and the data-directory lock, load the license once,
//! start the engine, serve, and stop gracefully. Must not: exit the process (only `main.rs` does),
//! write license files other than usage counters and the high-water mark, or run two engines on one
//! data directory.

// Two exceptions: `handover::adopt`, taking ownership of a descriptor handed to this process, and
// `host::keep_freed_heap`, setting a parameter of the C library's allocator.
#![deny(unsafe_code)]

pub mod auth;
pub mod config;
pub mod engine;
pub mod engine_handover;
pub mod events;
pub mod files;
pub mod gate;
pub mod handover;
pub mod host;
pub mod http;
pub mod license;
pub mod license_events;
pub mod metrics;
pub mod peer;
pub mod policy;
pub mod privitty;
pub mod rpc;
pub mod service;
pub mod signals;
pub mod spare;
#[cfg(test)]
mod test_util;
pub mod viewer;
pub mod work;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{Args, Config, ConfigError};
pub use license::License;

/// Why edged stopped with an error (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Host(#[from] host::HostError),
    #[error(transparent)]
    License(#[from] license::LoadError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the SIGTERM/SIGINT handlers")]
    Signals(#[source] std::io::Error),
    #[error("cannot use the listening socket")]
    Listener(#[source] std::io::Error),
    #[error("cannot open the Privitty key store in {path}")]
    KeyStore {
        path: std::path::PathBuf,
        #[source]
        source: Box<privitty::PrivittyError>,
    },
    #[error(transparent)]
    Wake(#[from] spare::WakeError),
    #[error("start-up failed inside privitty-edged: {0}")]
    Panicked(String),
    #[error(
        "--cors / PRIVITTY_CORS `*` would let every web page use the API while the API token is required on {0}; list the origins instead"
    )]
    CorsAnyWithAuth(std::net::SocketAddr),
    #[error("cannot set up the API token")]
    ApiToken(#[source] licensectl::api_token::ApiTokenError),
    #[error("cannot use the files directory {path} (check PRIVITTY_FILES_DIR and its owner)")]
    FilesDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the license comes from.
#[derive(Debug)]
pub enum LicenseSource {
    /// The license files of the data directory, read once (production).
    Files,
    /// A license given by the caller (tests, embedding).
    Given(Arc<dyn License>),
}

/// Runs edged as a process: takes the socket (inherited or bound), builds the runtime, stops on
/// SIGTERM/SIGINT. The socket is taken before any thread starts.
pub fn run_standalone(config: Config) -> Result<(), RunError> {
    let (listener, source) = host::take_listener(config.listen)?;
    let addr = listener.local_addr().map_err(RunError::Listener)?;
    let wake = host::take_wake();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if wake.is_some() {
        // A spare faults its threads' heap in while it waits (see host::prepare_spare_heap).
        host::prepare_spare_heap();
        builder.on_thread_start(host::warm_thread_heap);
        host::warm_main_thread();
    }
    let rt = builder.build().map_err(RunError::Runtime)?;
    let result = rt.block_on(async move {
        let mut config = config;
        let stop = signals::stop_requested().map_err(RunError::Signals)?;
        tokio::pin!(stop);
        let listener = TcpListener::from_std(listener).map_err(RunError::Listener)?;
        if let Some(wake) = wake {
            // A spare: started ahead of a swap, it reads nothing until it is told its generation.
            // privitty-init closes the pipe to end it (it exits 0, quietly).
            tokio::select! {
                woken = spare::wait(wake) => match woken? {
                    Some(info) => {
                        host::spare_woken();
                        config.generation = Some(info);
                    }
                    None => {
                        tracing::debug!("spare dismissed by privitty-init");
                        return Ok(());
                    }
                },
                () = &mut stop => return Ok(()),
            }
        }
        // Under privitty-init, every line of the serving path (and each connection's and engine
        // call's span below it) names the generation.
        let span = tracing::info_span!("edged", generation = config.generation.map(|g| g.number));
        // A spare says so only once it is a generation.
        span.in_scope(|| tracing::info!(%addr, socket = source, "listening"));
        tracing::Instrument::instrument(run(config, listener, LicenseSource::Files, stop), span)
            .await
    });
    // A thread still blocked on the data-directory lock must not hold up the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    result
}

/// Serves on `listener` until `shutdown` resolves, then stops gracefully. Start-up loads the
/// license and reads what needs no lock (the API token, the key store, the peer identity), then
/// waits for the data-directory lock (another generation may still hold it); a shutdown during
/// start-up returns Ok.
pub async fn run(
    config: Config,
    listener: TcpListener,
    license: LicenseSource,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    tokio::pin!(shutdown);
    // The license is read before the lock: during a generation swap the old generation still holds
    // the lock, and loading now keeps the verification out of the gap in service.
    let license: Arc<dyn License> = match license {
        LicenseSource::Given(l) => l,
        LicenseSource::Files => {
            let dir = config.accounts.clone();
            let loaded = tokio::task::spawn_blocking(move || license::Loaded::load(&dir))
                .await
                .map_err(|e| RunError::Panicked(e.to_string()))??;
            Arc::new(loaded)
        }
    };
    // The previous generation, when it stops for a swap, hands its engine over through this pair
    // before it lets the lock go.
    let engine_pair = host::take_engine_pair();
    let engine_deadline = config.stop_timeout * 2 / 5;
    let served = listener.local_addr().map_err(RunError::Listener)?;
    let auth_mode = config.api_auth.resolve(served);
    if auth_mode == auth::AuthMode::Required && config.cors == auth::Cors::Any {
        return Err(RunError::CorsAnyWithAuth(served));
    }
    // Everything that needs neither the engine nor the lock is read before the lock, while a
    // previous generation stopping for this swap still serves. What first boot creates here (the
    // API token, the fingerprint, the key store's master key, the peer identity) is created so
    // that a second process doing the same at the same time reads the winner's, never replaces
    // it, and nothing here changes after its creation.
    let prepared = {
        let cfg = config.clone();
        tokio::task::spawn_blocking(move || {
            let env_token = std::env::var(licensectl::api_token::ENV_TOKEN).ok();
            let auth = auth::Authenticator::load(
                auth_mode,
                &cfg.api_token,
                env_token.as_deref(),
                &cfg.accounts,
            )
            .map_err(RunError::ApiToken)?;
            let files =
                files::FilesDir::open(&cfg.files_dir).map_err(|source| RunError::FilesDir {
                    path: cfg.files_dir.clone(),
                    source,
                })?;
            // Stored at first boot; a damaged one leaves the viewer unavailable, nothing else.
            let fingerprint = licensectl::fingerprint::ensure(
                &licensectl::AccountsDir::new(&cfg.accounts),
                &licensectl::fingerprint::HostSources::system(),
            )
            .map(|stored| stored.fingerprint)
            .map_err(|e| {
                tracing::error!(error = %e, "the viewer (POST /auth) is unavailable");
                format!("the viewer is unavailable: {e}")
            });
            let store =
                privitty::Privitty::open(&cfg.accounts).map_err(|source| RunError::KeyStore {
                    path: cfg.accounts.clone(),
                    source: Box::new(source),
                })?;
            Ok::<_, RunError>((Arc::new(auth), files, fingerprint, Arc::new(store)))
        })
    };
    let prepared = async {
        let (auth, files_dir, fingerprint, files) = prepared
            .await
            .map_err(|e| RunError::Panicked(e.to_string()))??;
        let peer_files = peer::Peer::open_files(files.clone())
            .await
            .map_err(|source| RunError::KeyStore {
                path: config.accounts.clone(),
                source: Box::new(source),
            })?;
        Ok::<_, RunError>((auth, files_dir, fingerprint, files, peer_files))
    };
    let (auth, files_dir, fingerprint, files, peer_files) = tokio::select! {
        p = prepared => p?,
        _ = &mut shutdown => {
            stop_handed_engine(engine_pair.as_ref(), &config.accounts, engine_deadline).await;
            return Ok(());
        }
    };
    match auth.mode() {
        auth::AuthMode::Off if !served.ip().is_loopback() => tracing::warn!(
            listen = %served,
            "API authentication is OFF on a non-loopback address: anyone who reaches this port can \
             use the gateway; set PRIVITTY_API_AUTH=required (the default for this address)"
        ),
        mode => {
            tracing::info!(api_auth = mode.as_str(), files_dir = %files_dir.root().display(), "access control")
        }
    }
    let eval = license.evaluate(SystemTime::now());
    tracing::info!(
        status = eval.status.as_str(),
        reason = eval.reason.map(|r| r.as_str()),
        expires_at = eval.expires_at,
        "license loaded"
    );
    // Closed by a swap once no request has work left that needs the engine or the lock here.
    let work = work::WorkGate::new();
    let http_config = http::HttpConfig {
        work: work.clone(),
        cors: config.cors.clone(),
        auth: auth.clone(),
        metrics_auth: config.metrics_auth,
        host: auth::HostCheck::new(served, &config.allowed_hosts),
        max_batch: config.rpc_max_batch,
        max_response: config.rpc_max_response,
        sse_max_clients: config.sse_max_clients,
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        sse_ping_interval: config.sse_ping_interval,
        // A tenth for the standby wait (a swap), half for the drain, 2/5 for the engine.
        stop_timeout: config.stop_timeout / 2,
        viewer: Arc::new(viewer::Viewer::new(
            fingerprint,
            viewer::ViewerSettings {
                max_streams: config.viewer_max_streams,
                body_timeout: config.body_timeout,
            },
        )),
    };
    // The HTTP side starts now: it takes the connections a previous generation hands over while
    // this one waits for the lock and the engine, and serves them (and accepts new ones) once the
    // service is set.
    let (service_slot, service_rx) = watch::channel(None);
    let taken_early = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (http_stop_tx, mut http_stop) = watch::channel(false);
    let mut http = tokio::spawn(tracing::Instrument::in_current_span(http::serve(
        listener,
        service_rx,
        http_config,
        taken_early.clone(),
        async move { stopped(&mut http_stop).await },
    )));
    // All that can be done before the lock is done: a previous generation stopping for this swap
    // serves until it hears this, then lets the lock go as fast as it can.
    if let (Some(pair), Some(g)) = (&engine_pair, config.generation) {
        pair.announce_standby(g.number);
    }
    let started = start_engine(
        &config,
        engine_pair.as_ref(),
        engine_deadline,
        &mut shutdown,
    )
    .await;
    let EngineStarted {
        lock,
        hub,
        peer_events,
        engine,
        keeper,
        engine_stop: engine_stop_tx,
        carried,
    } = match started {
        Ok(Some(started)) => started,
        failed => {
            // Connections taken over wait, unread, for a service that never comes: they go on to
            // the next generation (or privitty-init closes them) as they came.
            drop(service_slot);
            let _ = http_stop_tx.send(true);
            let _ = http.await;
            return failed.map(|_| ());
        }
    };
    let metrics = Arc::new(metrics::Metrics::new(
        metrics::Sources {
            license: license.clone(),
            engine: Some(engine.clone()),
            hub: hub.clone(),
            generation: config.generation,
            accounts: Some(licensectl::AccountsDir::new(&config.accounts)),
        },
        config.metrics_recording,
    ));
    let license_events = license_events::LicenseEvents::new(
        license.clone(),
        config.license_warn_before,
        license_events::system_clock(),
        config.generation.map(|g| g.number),
    );
    let (license_events_stop_tx, license_events_stop) = watch::channel(false);
    let license_events_task =
        tokio::spawn(license_events.clone().run(hub.clone(), license_events_stop));
    let (peer_stop_tx, peer_stop) = watch::channel(false);
    let (peer, peer_task) = peer::Peer::start(
        engine.clone(),
        files.clone(),
        license.clone(),
        hub.clone(),
        files_dir.clone(),
        peer_files,
        peer_events,
        peer_stop,
        carried,
    );
    let service = Arc::new(service::Service {
        engine: engine.clone(),
        license: license.clone(),
        hub,
        files: Some(files),
        peer: Some(peer),
        policy: config.policy.clone(),
        files_dir,
        max_response: config.rpc_max_response,
        metrics,
        license_events,
    });
    // The connections taken over so far, and every one from now on, are served with it.
    service_slot.send_replace(Some(service));
    let (auth_stop_tx, auth_stop) = watch::channel(false);
    let auth_watch = tokio::spawn(auth::watch(auth.clone(), auth_stop));
    let (write_back_stop_tx, write_back_stop) = watch::channel(false);
    let write_back = tokio::spawn(license::write_back(license.clone(), write_back_stop));
    host::notify_ready(&format!("serving on {served}; license {}", eval.status));
    tracing::info!(
        addr = %served,
        license = eval.status.as_str(),
        generation = config.generation.map(|g| g.number),
        metrics_auth = config.metrics_auth.as_str(),
        connections_taken_over = taken_early.load(std::sync::atomic::Ordering::Relaxed),
        "ready"
    );
    // A stop for a swap (privitty-init's token) waits, still serving, until the next generation
    // is on standby (or a tenth of the stop timeout passed), so that what it hands over (the
    // connections, the engine) is taken at once rather than after the newcomer's start-up.
    let standby_limit = config.stop_timeout / 10;
    shutdown.await;
    let mut swap = false;
    let mut standby = false;
    if let (Some(pair), Some(g)) = (&engine_pair, config.generation) {
        let seen = pair.read_stop_messages(g.number);
        swap = seen.swap;
        standby = seen.standby;
        if seen.swap && !seen.standby {
            let waited = std::time::Instant::now();
            standby = pair.wait_for_standby(g.number, standby_limit).await;
            tracing::info!(
                standby,
                waited_ms = waited.elapsed().as_secs_f64() * 1000.0,
                "swap: the next generation is on standby"
            );
        }
    }
    let _ = http_stop_tx.send(true);
    // With the next generation on standby, the engine goes as soon as no request here has work
    // left that needs it, the lock or the agents (usually at once): the calls in flight go
    // with it, their answers come back through the next generation, and requests that come after
    // are passed to it unanswered. Otherwise, or when the HTTP side is done first, the engine
    // goes once every connection here is answered and handed over.
    let mut http_done = false;
    let early = swap
        && standby
        && tokio::select! {
            closed = work.close_when_quiet(config.stop_timeout / 2) => closed,
            result = &mut http => {
                http_done = true;
                if let Err(e) = result {
                    tracing::error!(error = %e, "the HTTP server failed inside privitty-edged");
                }
                false
            }
        };
    if early {
        tracing::debug!("swap: no request works with the engine here any more; it goes now");
    } else if !http_done && let Err(e) = (&mut http).await {
        tracing::error!(error = %e, "the HTTP server failed inside privitty-edged");
    }
    host::notify_stopping();
    let _ = peer_stop_tx.send(true);
    let peer_stopped = peer_task.await.ok();
    let _ = license_events_stop_tx.send(true);
    let _ = license_events_task.await;
    // A stop for a swap (privitty-init said so) hands the engine to the next generation; any
    // other stop, or a hand-over that cannot be done, stops it.
    if swap && let Some(pair) = &engine_pair {
        if let Some(mut released) = engine.release().await
            && let Err(failed) = {
                // Only now: no event arrives after the release, so the peer agent's knowledge is
                // known to be complete or not.
                released.carried = peer_stopped.and_then(peer::Stopped::hand_over);
                pair.send(released)
            }
        {
            let (released, error) = *failed;
            tracing::warn!(%error, "cannot hand the engine over; stopping it");
            engine::stop_released(released, engine_deadline).await;
        }
        let _ = keeper.await;
    } else {
        let _ = engine_stop_tx.send(true);
        if tokio::time::timeout(engine_deadline + Duration::from_millis(100), keeper)
            .await
            .is_err()
        {
            tracing::warn!("the engine keeper did not finish in time");
        }
    }
    // The engine is stopped or the next generation's: the lock has done its job, and the next
    // generation, waiting for it, starts serving now rather than after the write-back (which has
    // its own lock: usage is added, never overwritten).
    drop(lock);
    if early {
        // The requests in flight are answered as their engine answers come back, and their
        // connections handed over; the requests that came after are with the next generation.
        if let Err(e) = http.await {
            tracing::error!(error = %e, "the HTTP server failed inside privitty-edged");
        }
    }
    // Calls that went along with the engine (this generation's, or a previous one's still
    // passing through here) are answered before this process goes.
    if swap && !engine.forwarded_answered(engine_deadline).await {
        tracing::warn!(
            "engine answers to calls handed over with the engine did not all come back in time"
        );
    }
    if swap {
        // What is left (the write-back, the runtime's and the process's end: about a millisecond
        // of CPU) runs while the next generation works off the requests that waited for the swap:
        // it takes only the CPU nobody else wants.
        host::lower_priority();
    }
    let _ = write_back_stop_tx.send(true);
    let _ = write_back.await;
    let _ = auth_stop_tx.send(true);
    let _ = auth_watch.await;
    tracing::info!("stopped");
    Ok(())
}

/// What [`start_engine`] leaves running: the data-directory lock and the engine (adopted from the
/// previous generation or started), with the event hub it feeds.
struct EngineStarted {
    lock: host::DataDirLock,
    hub: events::Hub,
    /// The engine's events for the peer agent (tapped before the engine runs).
    peer_events: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    engine: engine::Engine,
    keeper: tokio::task::JoinHandle<()>,
    engine_stop: watch::Sender<bool>,
    /// What the previous generation's peer agent knew, when it was complete.
    carried: Option<serde_json::Value>,
}

/// Takes the data-directory lock (the previous generation lets it go once it has handed its engine
/// over), then the engine it handed over, or starts one. `Ok(None)`: a stop came first (an engine
/// handed over meanwhile is stopped, never left without an owner).
async fn start_engine(
    config: &Config,
    engine_pair: Option<&engine_handover::EnginePair>,
    engine_deadline: Duration,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<EngineStarted>, RunError> {
    let lock = tokio::select! {
        l = host::lock_data_dir(&config.accounts, config.wait_for_lock) => l?,
        _ = &mut *shutdown => {
            stop_handed_engine(engine_pair, &config.accounts, engine_deadline).await;
            return Ok(None);
        }
    };
    let hub = events::Hub::new(config.sse_buffer);
    // Engine events pass through the peer agent; control-instance events stay there. Tapped before
    // the engine runs, so the agent sees every event from the first (an adopted engine's first is
    // the answer to the previous generation's poll), even those before it starts.
    let (peer_events_tx, peer_events) = tokio::sync::mpsc::unbounded_channel();
    hub.tap(peer_events_tx);
    let (engine_stop_tx, engine_stop) = watch::channel(false);
    let engine_config = engine::EngineConfig {
        program: config.engine.clone(),
        data_dir: config.accounts.clone(),
        profile: config.profile.clone(),
        max_answer: config.rpc_max_response,
        realtime_off: !config.policy.realtime_allowed(),
    };
    let mut handed = engine_pair.and_then(engine_handover::EnginePair::receive);
    // What the previous generation's peer agent knew, for this one's to start from.
    let carried = handed.as_mut().and_then(|r| r.carried.take());
    let started = if let Some(released) = handed {
        // Running and set up already: no start, no set-up, no gap for them.
        Some(engine::Engine::adopt(
            engine_config,
            released,
            hub.clone(),
            engine_stop,
            engine_deadline,
        )?)
    } else {
        // A stop during the engine's start-up stops it like any other stop, never by dropping it
        // (which would SIGKILL an engine that may be writing its databases).
        let start = engine::Engine::start(engine_config, hub.clone(), engine_stop, engine_deadline);
        tokio::pin!(start);
        tokio::select! {
            r = &mut start => r?,
            _ = &mut *shutdown => {
                let _ = engine_stop_tx.send(true);
                start.await?
            }
        }
    };
    let Some((engine, keeper)) = started else {
        tracing::info!("stopped during the engine's start-up");
        return Ok(None);
    };
    Ok(Some(EngineStarted {
        lock,
        hub,
        peer_events,
        engine,
        keeper,
        engine_stop: engine_stop_tx,
        carried,
    }))
}

/// A stop of the whole tree while this generation started during a swap: the previous one may be
/// handing its engine over right now. Takes it once it has (the lock is free) and stops it, so no
/// engine is left without an owner.
async fn stop_handed_engine(
    pair: Option<&engine_handover::EnginePair>,
    accounts: &std::path::Path,
    deadline: Duration,
) {
    let Some(pair) = pair else {
        return;
    };
    let lock = host::lock_data_dir(accounts, true);
    if let Ok(Ok(_lock)) = tokio::time::timeout(deadline, lock).await
        && let Some(released) = pair.receive()
    {
        tracing::info!(
            pid = released.pid,
            "stopping the engine handed over during the stop"
        );
        engine::stop_released(released, deadline).await;
    }
}

/// Resolves once a stop flag turns true (or its sender is gone). Holds no borrow of the flag, so
/// `select!` arms using it stay `Send`.
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}
