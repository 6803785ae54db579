//! The harness of the network-namespace suite (`tests/netns.rs`): see [`mesh`] for the
//! topology. `pod` runs Pod manifests (what `meshctl inject` prints) like a kubelet, `sys` is
//! the OS plumbing, `http` a tiny client for probes, `report` the figures, `pcap` reads
//! packet captures.
#![allow(dead_code)]

pub mod http;
pub mod mesh;
pub mod pcap;
pub mod pod;
pub mod report;
pub mod sys;

pub use mesh::{Mesh, PodSpec, NS};
pub use report::LoadResult;
