//! A TCP proxy in front of etcd that a test can cut (closing every
//! connection and refusing new ones) and heal, to hold a client disconnected
//! while etcd itself keeps serving.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; dropping it stops it.
pub struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (open, open_rx) = watch::channel(true);
        let task = tokio::spawn(accept_loop(listener, upstream, open_rx));
        Proxy { addr, open, task }
    }

    /// `http://` endpoint of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, open: watch::Receiver<bool>) {
    while let Ok((inbound, _)) = listener.accept().await {
        if !*open.borrow() {
            drop(inbound);
            continue;
        }
        tokio::spawn(pipe(inbound, upstream, open.clone()));
    }
}

async fn pipe(mut inbound: TcpStream, upstream: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = open.wait_for(|o| !*o) => {}
    }
}
