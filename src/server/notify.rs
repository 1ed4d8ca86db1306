//! Telling systemd how the service is (`Type=notify`, see
//! `deploy/ocirelay.service`): `READY=1` once every worker accepts, so that
//! `systemctl start` returns only then (an upgrade stops the old instance
//! after that, not while the new one is still taking its sockets over), and
//! `STOPPING=1` when the drain starts. One datagram to `$NOTIFY_SOCKET`
//! each; nothing when it is unset (not started by systemd).

use std::os::unix::net::UnixDatagram;

use crate::ops::log::Level;

/// Sends `state` (`READY=1`, ...) to the service manager, if there is one.
pub fn notify(state: &str) {
    let Some(to) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&to, state) {
        crate::event!(
            Level::Warn,
            None,
            "cannot tell the service manager {state:?} on {}: {e}",
            to.to_string_lossy()
        );
    }
}

fn send(to: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = to.as_bytes();
    // `@name`: Linux's abstract namespace.
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), to)?;
        }
    }
    Ok(())
}
