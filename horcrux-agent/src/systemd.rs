//! The service manager's notification protocol (`sd_notify`), spoken directly:
//! `READY=1` once collection is complete (the eBPF programs attached or failed, a
//! node and a container snapshot published), then `WATCHDOG=1` while both
//! collectors keep publishing, when the unit asks for a watchdog.

use std::{sync::Arc, time::Duration};

use crate::http::AppState;

pub async fn notify_when_ready(state: Arc<AppState>) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    while !state.ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    notify(&socket, "READY=1");
    let Some(period) = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|usec| usec.parse::<u64>().ok())
        .map(|usec| Duration::from_micros(usec / 2))
        .filter(|period| !period.is_zero())
    else {
        return;
    };
    loop {
        if state.collectors_fresh() {
            notify(&socket, "WATCHDOG=1");
        }
        tokio::time::sleep(period).await;
    }
}

fn notify(socket: &std::ffi::OsStr, message: &str) {
    use std::os::{linux::net::SocketAddrExt, unix::ffi::OsStrExt};
    let sent = std::os::unix::net::UnixDatagram::unbound().and_then(|datagram| {
        let bytes = socket.as_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(abstract_name) => {
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(socket))?,
        };
        datagram.send_to_addr(message.as_bytes(), &address)
    });
    if let Err(error) = sent {
        tracing::warn!("sd_notify {message}: {error}");
    }
}
