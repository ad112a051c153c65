//! The simulated UDP socket a real quinn endpoint runs on: sends go into
//! the simulated network, deliveries arrive in a bounded receive queue that
//! wakes the endpoint's receiver.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::Inner;

/// Datagrams waiting in one socket's receive queue at most; beyond it the
/// network drops (`receive_queue_full`), as a kernel does when a reader
/// falls behind.
pub const RECEIVE_QUEUE_MAX: usize = 4096;

/// One host's socket, for one incarnation of its broker. A crash mutes it
/// for good; a restart binds a new one on the same address.
pub struct SimSocket {
    net: Weak<Inner>,
    host: usize,
    incarnation: u64,
    addr: SocketAddr,
    inbox: Mutex<Inbox>,
}

#[derive(Default)]
struct Inbox {
    datagrams: VecDeque<(SocketAddr, Vec<u8>)>,
    waker: Option<Waker>,
    muted: bool,
}

impl std::fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimSocket")
            .field("addr", &self.addr)
            .field("incarnation", &self.incarnation)
            .finish_non_exhaustive()
    }
}

impl SimSocket {
    pub(super) fn new(net: Weak<Inner>, host: usize, incarnation: u64, addr: SocketAddr) -> Self {
        SimSocket {
            net,
            host,
            incarnation,
            addr,
            inbox: Mutex::new(Inbox::default()),
        }
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a delivered datagram; returns the waker to wake, or `Err`
    /// when the queue is full or the socket muted.
    pub(super) fn push(&self, from: SocketAddr, payload: Vec<u8>) -> Result<Option<Waker>, ()> {
        let mut inbox = self.inbox();
        if inbox.muted || inbox.datagrams.len() >= RECEIVE_QUEUE_MAX {
            return Err(());
        }
        inbox.datagrams.push_back((from, payload));
        Ok(inbox.waker.take())
    }

    /// Mutes the socket: nothing more is received, and the queue is
    /// dropped. Sends are refused by the network from now on.
    pub(super) fn mute(&self) {
        let mut inbox = self.inbox();
        inbox.muted = true;
        inbox.datagrams.clear();
        inbox.waker = None;
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(net) = self.net.upgrade() else {
            return Ok(());
        };
        // One datagram per segment; the socket says it takes one segment
        // per transmit, so this is a single datagram in practice.
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for payload in transmit.contents.chunks(segment) {
            net.send(
                self.host,
                self.incarnation,
                self.addr,
                transmit.destination,
                payload,
            );
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut inbox = self.inbox();
        let mut n_received = 0;
        while n_received < bufs.len().min(meta.len()) {
            let Some((from, payload)) = inbox.datagrams.pop_front() else {
                break;
            };
            let buf = &mut bufs[n_received];
            let len = payload.len().min(buf.len());
            buf[..len].copy_from_slice(&payload[..len]);
            meta[n_received] = RecvMeta {
                addr: from,
                len,
                stride: len,
                ecn: None,
                dst_ip: Some(self.addr.ip()),
            };
            n_received += 1;
        }
        if n_received > 0 {
            return Poll::Ready(Ok(n_received));
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

/// Sends never block: the network takes every datagram at once and drops
/// what a link cannot carry.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
