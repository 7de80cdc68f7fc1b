//! Serving the API on its listener: plain HTTP, or HTTPS with a certificate that SIGHUP
//! reloads ([`tls`](super::tls)); both stop accepting at `shutdown` and finish the requests
//! under way.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

use super::tls::ReloadableTls;

/// Serves `router` on `listener` (HTTPS when `tls` is given) until `shutdown` completes and the
/// requests under way are answered.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<ReloadableTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    let Some(tls) = tls else {
        return axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    };
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(None);
    });
    axum_server::tls_rustls::from_tcp_rustls(listener.into_std()?, tls.rustls_config())?.handle(handle).serve(app).await
}

/// Whether plain HTTP on `listen` would carry API keys and secrets over a network: any
/// address but loopback.
pub fn exposes_plaintext(listen: SocketAddr) -> bool {
    !listen.ip().is_loopback()
}
