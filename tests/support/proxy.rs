//! A TCP proxy between the tests' clients and a PostgreSQL server that can
//! lose the reply to a commit: it lets the commit through, waits for the
//! server's answer (so the transaction is committed), and instead of
//! relaying it closes both sides of that connection, as a network failure
//! at the worst moment would.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy did with a lost reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedReply {
    /// Whether the transaction ended with an explicit `COMMIT` (else the
    /// marked statement ran outside a transaction and committed itself).
    pub explicit_commit: bool,
}

struct Shared {
    upstream: SocketAddr,
    /// The bytes whose appearance in a client's message arms the loss,
    /// and whether only the reply to an explicit `COMMIT` is lost.
    marker: Mutex<Option<(Vec<u8>, bool)>>,
    dropped: watch::Sender<Option<DroppedReply>>,
    /// Whether new connections are closed as soon as they are accepted.
    refusing: AtomicBool,
    /// Whether to start refusing when a reply is lost.
    refuse_after_loss: AtomicBool,
    /// How many connections were refused.
    refused: watch::Sender<u64>,
}

/// A proxy listening on a free port of 127.0.0.1.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to the server at `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            upstream,
            marker: Mutex::new(None),
            dropped: watch::channel(None).0,
            refusing: AtomicBool::new(false),
            refuse_after_loss: AtomicBool::new(false),
            refused: watch::channel(0).0,
        });
        let accepting = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if accepting.refusing.load(Ordering::SeqCst) {
                    drop(client);
                    accepting.refused.send_modify(|n| *n += 1);
                    continue;
                }
                tokio::spawn(relay(client, accepting.clone()));
            }
        });
        Proxy { port, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Loses the reply that ends the transaction of the next client message
    /// holding `marker`: the reply to that statement if it committed on its
    /// own, else the reply to the transaction's `COMMIT`. Once.
    pub fn lose_commit_reply_after(&self, marker: &[u8]) {
        *self.shared.marker.lock().unwrap() = Some((marker.to_vec(), false));
    }

    /// Loses the reply to the first explicit `COMMIT` sent after a client
    /// message holding `marker` on the same connection (replies to
    /// statements that commit on their own are relayed). Once.
    pub fn lose_explicit_commit_reply_after(&self, marker: &[u8]) {
        *self.shared.marker.lock().unwrap() = Some((marker.to_vec(), true));
    }

    /// Whether new connections are closed at once (the server looks down).
    pub fn set_refusing(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Waits until `count` connections in all were refused.
    pub async fn refused(&self, count: u64) {
        let mut refused = self.shared.refused.subscribe();
        refused
            .wait_for(|n| *n >= count)
            .await
            .expect("the proxy is running");
    }

    /// Starts refusing new connections at the moment a reply is lost.
    pub fn refuse_after_loss(&self) {
        self.shared.refuse_after_loss.store(true, Ordering::SeqCst);
    }

    /// Waits until a commit's reply was lost; what it was.
    pub async fn dropped(&self) -> DroppedReply {
        let mut seen = self.shared.dropped.subscribe();
        let dropped = seen
            .wait_for(|d| d.is_some())
            .await
            .expect("the proxy is running");
        dropped.clone().unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `haystack` holds `needle`.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn relay(mut client: TcpStream, shared: Arc<Shared>) {
    let Ok(mut server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    // Set once the client sent the marker on this connection: from then on
    // the server's replies are read message by message.
    let marked = AtomicBool::new(false);
    let explicit_only = AtomicBool::new(false);
    let commit_sent = AtomicBool::new(false);
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            if !marked.load(Ordering::SeqCst) {
                let mut marker = shared.marker.lock().unwrap();
                if let Some((m, explicit)) = marker.as_ref() {
                    let mut window = std::mem::take(&mut tail);
                    window.extend_from_slice(chunk);
                    if holds(&window, m) {
                        explicit_only.store(*explicit, Ordering::SeqCst);
                        *marker = None;
                        marked.store(true, Ordering::SeqCst);
                    } else {
                        let keep = window.len().min(m.len());
                        tail = window[window.len() - keep..].to_vec();
                    }
                }
            } else if holds(chunk, b"COMMIT") {
                commit_sent.store(true, Ordering::SeqCst);
            }
            if server_write.write_all(chunk).await.is_err() {
                return;
            }
        }
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        // The marked connection's replies, from the last ReadyForQuery on.
        let mut reply: Vec<u8> = Vec::new();
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if !marked.load(Ordering::SeqCst) {
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                continue;
            }
            reply.extend_from_slice(&buf[..n]);
            // Walk whole messages (type, length, body) to each ReadyForQuery.
            let mut at = 0;
            while reply.len() >= at + 5 {
                let kind = reply[at];
                let len = u32::from_be_bytes(reply[at + 1..at + 5].try_into().unwrap()) as usize;
                if reply.len() < at + 1 + len {
                    break;
                }
                at += 1 + len;
                if kind == b'Z' {
                    let status = reply[at - 1];
                    let explicit_commit = commit_sent.load(Ordering::SeqCst);
                    if status == b'I' && (explicit_commit || !explicit_only.load(Ordering::SeqCst))
                    {
                        // Committed, and the client will never hear of it.
                        if shared.refuse_after_loss.swap(false, Ordering::SeqCst) {
                            shared.refusing.store(true, Ordering::SeqCst);
                        }
                        shared
                            .dropped
                            .send_replace(Some(DroppedReply { explicit_commit }));
                        return;
                    }
                    // Still in the transaction (or not the commit looked
                    // for): relay up to here.
                    if client_write.write_all(&reply[..at]).await.is_err() {
                        return;
                    }
                    reply.drain(..at);
                    at = 0;
                }
            }
        }
    };
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
    // Both sockets close here, the reply unsent.
}
