//! The connection layer of the server and the relay: accepts TCP connections, speaks TLS when
//! configured, and serves HTTP/1.1 with limits, so that connections cannot take the control
//! plane (or a relay, and the agents behind it) down.
//!
//! - **Header timeout**: a request's head must arrive within `header_timeout_ms` of the
//!   connection being ready for it (hyper's header read timeout), and a TLS handshake within
//!   the same time; a client that trickles half a request is closed.
//! - **Idle timeout**: a connection with no request being handled, or whose request body
//!   stopped arriving, and no byte read or written for `idle_timeout_ms`, is closed.
//! - **Bounds on connections**: at most `max_connections` open, and at most
//!   `max_connections_per_client` from one IP address. When a bound is reached, a new
//!   connection takes the place of the quietest connection (of that client, for its bound)
//!   that has no request in flight (a watch or any request being answered is never cut); when
//!   every such connection is busy, the new one is closed at once. Idle connections therefore
//!   cannot lock agents and operators out, however many there are.
//!
//! Graceful shutdown: stop accepting, let each connection finish the request it is answering,
//! then close; connections still open after [`SHUTDOWN_GRACE_MS`] are dropped.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Default for [`ConnectionLimits::max_connections`].
pub const MAX_CONNECTIONS_DEFAULT: usize = 4096;
/// Default for [`ConnectionLimits::max_connections_per_client`].
pub const MAX_CONNECTIONS_PER_CLIENT_DEFAULT: usize = 1024;
/// Default for [`ConnectionLimits::header_timeout_ms`].
pub const HEADER_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default for [`ConnectionLimits::idle_timeout_ms`].
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 60_000;
/// Longest wait at shutdown for connections to finish their requests.
pub const SHUTDOWN_GRACE_MS: u64 = 30_000;
/// Wait before accepting again after an accept failed for want of resources, in milliseconds.
pub const ACCEPT_RETRY_MS: u64 = 50;
/// Largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Limits on the connections a server or relay keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub max_connections_per_client: usize,
    /// Longest time for a request's head (and a TLS handshake) to arrive, in milliseconds.
    pub header_timeout_ms: u64,
    /// A connection with nothing in flight and no byte moved for this long is closed, in
    /// milliseconds.
    pub idle_timeout_ms: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS_DEFAULT,
            max_connections_per_client: MAX_CONNECTIONS_PER_CLIENT_DEFAULT,
            header_timeout_ms: HEADER_TIMEOUT_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl ConnectionLimits {
    /// Checks every field, naming the one that is out of bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections < 2 || self.max_connections > 1_000_000 {
            return Err(format!(
                "max_connections {} is out of bounds: 2 to 1000000",
                self.max_connections
            ));
        }
        if self.max_connections_per_client == 0 {
            return Err(
                "max_connections_per_client 0 is out of bounds: at least 1 (above max_connections, max_connections bounds it)"
                    .to_owned(),
            );
        }
        if self.header_timeout_ms < 100 || self.header_timeout_ms > 600_000 {
            return Err(format!(
                "header_timeout_ms {} is out of bounds: 100 ms to 10 min",
                self.header_timeout_ms
            ));
        }
        if self.idle_timeout_ms < 100 || self.idle_timeout_ms > 3_600_000 {
            return Err(format!(
                "idle_timeout_ms {} is out of bounds: 100 ms to 1 h",
                self.idle_timeout_ms
            ));
        }
        Ok(())
    }
}

/// What one connection is doing, as the accept loop and its own task see it.
#[derive(Debug)]
struct ConnState {
    /// The client's address.
    peer: IpAddr,
    /// Requests whose handler is running (a watch, a push, ...).
    in_flight: AtomicUsize,
    /// Request bodies still being received.
    bodies_open: AtomicUsize,
    /// Milliseconds since the server's epoch of the last byte read or written.
    last_active_ms: AtomicU64,
    /// The accept loop asked this connection to make room.
    evicted: AtomicBool,
    /// The idle sweep found this connection idle past the idle timeout.
    idle_out: AtomicBool,
    wake: Notify,
}

impl ConnState {
    fn new(peer: IpAddr, now_ms: u64) -> Self {
        Self {
            peer,
            in_flight: AtomicUsize::new(0),
            bodies_open: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(now_ms),
            evicted: AtomicBool::new(false),
            idle_out: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Nothing is being answered, or the one request waits for a body that stopped coming.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 || self.bodies_open.load(Ordering::Acquire) > 0
    }

    /// No request is being answered: closing it loses nothing.
    fn is_evictable(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.evicted.load(Ordering::Acquire)
    }
}

/// The open connections, by id, and how many of them count against the bounds: those not
/// asked to close, in all and per client (kept as they change, so that admitting a connection
/// costs the same with 20 open as with 20,000; only making room walks them).
#[derive(Debug, Default)]
struct Open {
    conns: BTreeMap<u64, Arc<ConnState>>,
    live: usize,
    live_per_peer: HashMap<IpAddr, usize>,
}

impl Open {
    fn insert(&mut self, id: u64, conn: Arc<ConnState>) {
        self.live = self.live.saturating_add(1);
        let count = self.live_per_peer.entry(conn.peer).or_insert(0);
        *count = count.saturating_add(1);
        self.conns.insert(id, conn);
    }

    fn remove(&mut self, id: u64) {
        if let Some(conn) = self.conns.remove(&id)
            && !conn.evicted.load(Ordering::Acquire)
        {
            self.no_longer_live(conn.peer);
        }
    }

    /// Asks `conn` to close: it no longer counts against the bounds.
    fn evict(&mut self, conn: &ConnState) {
        if !conn.evicted.swap(true, Ordering::AcqRel) {
            self.no_longer_live(conn.peer);
        }
        conn.wake.notify_one();
    }

    fn no_longer_live(&mut self, peer: IpAddr) {
        self.live = self.live.saturating_sub(1);
        if let Some(count) = self.live_per_peer.get_mut(&peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.live_per_peer.remove(&peer);
            }
        }
    }

    fn live_from(&self, peer: IpAddr) -> usize {
        self.live_per_peer.get(&peer).copied().unwrap_or(0)
    }
}

/// The open connections and the bounds they are held to.
#[derive(Debug)]
struct Registry {
    epoch: Instant,
    limits: ConnectionLimits,
    open: Mutex<Open>,
    next_id: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
}

impl Registry {
    fn new(limits: ConnectionLimits) -> Self {
        Self {
            epoch: Instant::now(),
            limits,
            open: Mutex::new(Open::default()),
            next_id: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a new connection from `peer`, making room by evicting the quietest idle
    /// connection when a bound is reached (the client's own, for the per-client bound);
    /// `None` when every candidate is busy.
    fn admit(&self, peer: IpAddr) -> Option<(u64, Arc<ConnState>)> {
        let mut open = self.lock();
        // Evicted connections close within moments; until they do they still count, and
        // twice the bound is never exceeded.
        if open.conns.len() >= self.limits.max_connections.saturating_mul(2) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let room = if open.live_from(peer) >= self.limits.max_connections_per_client {
            self.evict_quietest(&mut open, Some(peer))
        } else if open.live >= self.limits.max_connections {
            self.evict_quietest(&mut open, None)
        } else {
            true
        };
        if !room {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState::new(peer, self.now_ms()));
        open.insert(id, Arc::clone(&conn));
        Some((id, conn))
    }

    /// Wakes each connection that has been idle for the idle timeout, to close itself (it
    /// checks again, as a byte may have moved since). One sweep for all connections rather
    /// than a timer in each: a parked long poll then costs no timer and no wake-ups.
    fn sweep_idle(&self) {
        let now = self.now_ms();
        let open = self.lock();
        for conn in open.conns.values() {
            let quiet_ms = now.saturating_sub(conn.last_active_ms.load(Ordering::Acquire));
            if conn.is_idle()
                && quiet_ms >= self.limits.idle_timeout_ms
                && !conn.idle_out.swap(true, Ordering::AcqRel)
            {
                conn.wake.notify_one();
            }
        }
    }

    /// Asks the quietest connection with no request in flight (of `peer`, when given) to
    /// close; whether there was one.
    fn evict_quietest(&self, open: &mut Open, peer: Option<IpAddr>) -> bool {
        let quietest = open
            .conns
            .values()
            .filter(|conn| conn.is_evictable() && peer.is_none_or(|peer| conn.peer == peer))
            .min_by_key(|conn| conn.last_active_ms.load(Ordering::Acquire))
            .map(Arc::clone);
        match quietest {
            Some(conn) => {
                open.evict(&conn);
                self.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// Removes a connection from the registry when its task ends, however it ends.
struct Deregister {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        self.registry.lock().remove(self.id);
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let registry = Arc::new(Registry::new(limits));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_millis(
        (limits.idle_timeout_ms / 4).clamp(50, 1_000),
    ));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                registry.sweep_idle();
                continue;
            }
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks so the set stays as large as what is open.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let tcp = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors or a connection reset before accept: wait a moment
                // (the bound makes room) rather than spin, and keep serving.
                if is_out_of_files(&error) {
                    tracing::error!(
                        %error,
                        open = registry.lock().conns.len(),
                        "cannot accept a connection: out of file descriptors (raise the \
                         open-file limit, LimitNOFILE= under systemd, or lower max_connections)"
                    );
                } else if !is_per_connection_error(&error) {
                    tracing::warn!(%error, "cannot accept a connection");
                }
                if !is_per_connection_error(&error) {
                    tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                }
                continue;
            }
        };
        let (tcp, peer) = tcp;
        let Some((id, conn)) = registry.admit(peer.ip()) else {
            drop(tcp);
            continue;
        };
        let guard = Deregister {
            registry: Arc::clone(&registry),
            id,
        };
        let task = Connection {
            registry: Arc::clone(&registry),
            conn,
            router: router.clone(),
            closing: closing_rx.clone(),
        };
        let acceptor = acceptor.clone();
        tasks.spawn(async move {
            let _guard = guard;
            let _ = tcp.set_nodelay(true);
            task.run(tcp, acceptor).await;
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    let grace = tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            () = &mut grace => {
                tasks.abort_all();
                break;
            }
            next = tasks.join_next() => if next.is_none() { break },
        }
    }
    Ok(())
}

/// The process (EMFILE) or the system (ENFILE) has no file descriptor left for a connection.
fn is_out_of_files(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One accepted connection's task.
struct Connection {
    registry: Arc<Registry>,
    conn: Arc<ConnState>,
    router: Router,
    closing: watch::Receiver<bool>,
}

impl Connection {
    async fn run(self, tcp: tokio::net::TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>) {
        let io = Activity {
            inner: tcp,
            conn: Arc::clone(&self.conn),
            registry: Arc::clone(&self.registry),
        };
        match acceptor {
            None => self.serve_http(io).await,
            // Boxed: a task's future is as large as its largest path, and the TLS path (its
            // handshake, its stream's state) would make every plain connection's as large.
            Some(acceptor) => Box::pin(self.serve_tls(io, acceptor)).await,
        }
    }

    async fn serve_tls(
        self,
        io: Activity<tokio::net::TcpStream>,
        acceptor: tokio_rustls::TlsAcceptor,
    ) {
        let timeout = Duration::from_millis(self.registry.limits.header_timeout_ms);
        let handshake = tokio::select! {
            handshake = tokio::time::timeout(timeout, acceptor.accept(io)) => handshake,
            () = self.conn.wake.notified() => return,
        };
        // A failed or slow handshake closes the connection; the client sees why.
        if let Ok(Ok(stream)) = handshake {
            self.serve_http(stream).await;
        }
    }

    async fn serve_http<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.registry.limits;
        let service = Counted {
            router: self.router.clone(),
            conn: Arc::clone(&self.conn),
        };
        // The builder is not kept in the task's future: it would stay there as long as the
        // connection does.
        let connection = {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(limits.header_timeout_ms))
                .max_buf_size(MAX_HEAD_BYTES);
            builder.serve_connection(
                TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(service),
            )
        };
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => return,
                () = self.conn.wake.notified() => {
                    if self.conn.idle_out.swap(false, Ordering::AcqRel)
                        && !self.conn.evicted.load(Ordering::Acquire)
                    {
                        let quiet_ms = self
                            .registry
                            .now_ms()
                            .saturating_sub(self.conn.last_active_ms.load(Ordering::Acquire));
                        if self.conn.is_idle() && quiet_ms >= limits.idle_timeout_ms {
                            return;
                        }
                        continue;
                    }
                    if self.conn.in_flight.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
                changed = self.closing.changed(), if !draining => {
                    if changed.is_err() || *self.closing.borrow() {
                        connection.as_mut().graceful_shutdown();
                        draining = true;
                    }
                }
            }
        }
    }
}

/// The router, counting the requests in flight on its connection and wrapping each request
/// body so that a body that stops arriving leaves the connection idle.
#[derive(Clone)]
struct Counted {
    router: Router,
    conn: Arc<ConnState>,
}

/// Ends one request in flight when dropped.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl tower_service::Service<hyper::Request<Incoming>> for Counted {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = CountedFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::Request<Incoming>) -> Self::Future {
        self.conn.in_flight.fetch_add(1, Ordering::AcqRel);
        let in_flight = InFlight(Arc::clone(&self.conn));
        let (parts, body) = request.into_parts();
        let body = Body::new(WatchedBody::new(body, Arc::clone(&self.conn)));
        let request = hyper::Request::from_parts(parts, body);
        CountedFuture {
            answering: tower_service::Service::call(&mut self.router, request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project_lite::pin_project! {
    /// The router's answer to one request, which ends the request in flight when it is
    /// ready or dropped. A named type rather than a boxed one: hyper keeps it in the box it
    /// holds for the request in flight, one allocation per parked long poll fewer.
    struct CountedFuture {
        #[pin]
        answering: axum::routing::future::RouteFuture<Infallible>,
        in_flight: Option<InFlight>,
    }
}

impl Future for CountedFuture {
    type Output = Result<axum::response::Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = std::task::ready!(this.answering.poll(cx));
        drop(this.in_flight.take());
        Poll::Ready(answered)
    }
}

/// A request body that counts itself open on its connection until it ends or is dropped.
struct WatchedBody {
    inner: Incoming,
    conn: Option<Arc<ConnState>>,
}

impl WatchedBody {
    fn new(inner: Incoming, conn: Arc<ConnState>) -> Self {
        use http_body::Body as _;
        if inner.is_end_stream() {
            return Self { inner, conn: None };
        }
        conn.bodies_open.fetch_add(1, Ordering::AcqRel);
        Self {
            inner,
            conn: Some(conn),
        }
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.bodies_open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A byte stream that marks its connection active on every byte read or written.
struct Activity<S> {
    inner: S,
    conn: Arc<ConnState>,
    registry: Arc<Registry>,
}

impl<S> Activity<S> {
    fn touch(&self) {
        self.conn
            .last_active_ms
            .store(self.registry.now_ms(), Ordering::Release);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(written)) if written > 0) {
            self.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_file_descriptors_is_told_apart() {
        assert!(is_out_of_files(&io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(is_out_of_files(&io::Error::from_raw_os_error(libc::ENFILE)));
        assert!(!is_out_of_files(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
    }

    #[test]
    fn limits_name_the_field_out_of_bounds() {
        assert!(ConnectionLimits::default().validate().is_ok());
        let bad = ConnectionLimits {
            header_timeout_ms: 5,
            ..ConnectionLimits::default()
        };
        assert!(bad.validate().unwrap_err().contains("header_timeout_ms"));
        let bad = ConnectionLimits {
            max_connections: 1,
            ..ConnectionLimits::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_connections"));
    }

    #[test]
    fn at_the_bound_the_quietest_idle_connection_makes_room_and_busy_ones_never_do() {
        let registry = Registry::new(ConnectionLimits {
            max_connections: 2,
            max_connections_per_client: 2,
            ..ConnectionLimits::default()
        });
        let here = IpAddr::from([127, 0, 0, 1]);
        let (_, busy) = registry.admit(here).unwrap();
        busy.in_flight.store(1, Ordering::Release);
        let (_, idle) = registry.admit(here).unwrap();
        let (_, third) = registry.admit(here).unwrap();
        assert!(idle.evicted.load(Ordering::Acquire));
        assert!(!busy.evicted.load(Ordering::Acquire));
        third.in_flight.store(1, Ordering::Release);
        // Both remaining candidates are busy (the evicted one has not closed yet, and the
        // map is at twice the bound minus one): the next is refused once room runs out.
        let fourth = registry.admit(here);
        assert!(fourth.is_none());
        assert_eq!(registry.refused.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_idle_sweep_wakes_each_quiet_idle_connection_once_and_never_a_busy_one() {
        // A registry whose clock has run for 10 s, so that activity can lie in its past.
        let mut registry = Registry::new(ConnectionLimits {
            idle_timeout_ms: 1_000,
            ..ConnectionLimits::default()
        });
        registry.epoch -= Duration::from_secs(10);
        let here = IpAddr::from([127, 0, 0, 1]);
        let (_, quiet) = registry.admit(here).unwrap();
        let (_, busy) = registry.admit(here).unwrap();
        let (_, recent) = registry.admit(here).unwrap();
        let (_, stalled_body) = registry.admit(here).unwrap();
        busy.in_flight.store(1, Ordering::Release);
        // A request waiting for a body that stopped coming is idle.
        stalled_body.in_flight.store(1, Ordering::Release);
        stalled_body.bodies_open.store(1, Ordering::Release);
        let past = registry.now_ms().saturating_sub(5_000);
        for conn in [&quiet, &busy, &stalled_body] {
            conn.last_active_ms.store(past, Ordering::Release);
        }
        recent
            .last_active_ms
            .store(registry.now_ms(), Ordering::Release);
        registry.sweep_idle();
        assert!(quiet.idle_out.load(Ordering::Acquire));
        assert!(stalled_body.idle_out.load(Ordering::Acquire));
        assert!(!busy.idle_out.load(Ordering::Acquire));
        assert!(!recent.idle_out.load(Ordering::Acquire));
        // Woken once: the permit is there, and a second sweep adds none until it is taken.
        registry.sweep_idle();
        let woken = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(async {
                let first =
                    tokio::time::timeout(Duration::from_millis(50), quiet.wake.notified()).await;
                let second =
                    tokio::time::timeout(Duration::from_millis(50), quiet.wake.notified()).await;
                (first.is_ok(), second.is_ok())
            });
        assert_eq!(woken, (true, false));
    }

    #[test]
    fn a_client_at_its_own_bound_makes_room_among_its_own_connections_only() {
        let registry = Registry::new(ConnectionLimits {
            max_connections: 10,
            max_connections_per_client: 2,
            ..ConnectionLimits::default()
        });
        let (flood, other) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let (_, agent) = registry.admit(other).unwrap();
        let (_, first) = registry.admit(flood).unwrap();
        let _second = registry.admit(flood).unwrap();
        let _third = registry.admit(flood).unwrap();
        assert!(first.evicted.load(Ordering::Acquire));
        assert!(!agent.evicted.load(Ordering::Acquire));
    }

    #[test]
    fn the_counts_the_bounds_read_follow_every_admission_eviction_and_close() {
        let registry = Registry::new(ConnectionLimits {
            max_connections: 3,
            max_connections_per_client: 2,
            ..ConnectionLimits::default()
        });
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let mut ids = Vec::new();
        for peer in [a, a, a, b, b] {
            let (id, _) = registry.admit(peer).unwrap();
            ids.push(id);
            let open = registry.lock();
            let live = open
                .conns
                .values()
                .filter(|conn| !conn.evicted.load(Ordering::Acquire))
                .count();
            assert_eq!(open.live, live);
            for peer in [a, b] {
                let from = open
                    .conns
                    .values()
                    .filter(|conn| conn.peer == peer && !conn.evicted.load(Ordering::Acquire))
                    .count();
                assert_eq!(open.live_from(peer), from);
            }
            assert!(open.live <= 3 && open.live_from(a) <= 2 && open.live_from(b) <= 2);
        }
        // Two evictions made room (a's third, then the fleet bound at b's second).
        assert_eq!(registry.evicted.load(Ordering::Relaxed), 2);
        for id in ids {
            registry.lock().remove(id);
        }
        let open = registry.lock();
        assert_eq!((open.conns.len(), open.live), (0, 0));
        assert!(open.live_per_peer.is_empty());
    }
}
