//! What the in-process node tests share: a node on 127.0.0.1 (port 0) with its own store,
//! running until dropped.

use std::time::Duration;

use distc_peer::node::{self, Node, NodeConfig};
use distc_peer::store::Store;
use libp2p::Multiaddr;

pub struct TestNode {
    pub node: Node,
    pub task: tokio::task::JoinHandle<()>,
    /// Its first listen address with `/p2p/<id>`, for others to bootstrap from.
    pub addr: Multiaddr,
    _dir: tempfile::TempDir,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a node with `cfg` and a store of `store_size` bytes; waits up to `listen_wait` for
/// it to listen.
pub async fn start(cfg: NodeConfig, store_size: u64, listen_wait: Duration) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store"), store_size).unwrap();
    let (node, ev) = node::new(cfg, store).unwrap();
    let task = tokio::spawn(ev.run());
    assert!(
        node.wait_for(listen_wait, |v| !v.listen.is_empty()).await,
        "node never listened"
    );
    let v = node.view();
    let addr = v.listen[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(v.me));
    TestNode {
        node,
        task,
        addr,
        _dir: dir,
    }
}
